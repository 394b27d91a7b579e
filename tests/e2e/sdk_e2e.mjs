// Drives the official @trigger.dev/sdk against a running server.
// Env: TRIGGER_API_URL, TRIGGER_SECRET_KEY. Exits non-zero on the first failed check.
import assert from "node:assert/strict";
import { auth, configure, idempotencyKeys, runs, tasks } from "@trigger.dev/sdk";

const baseURL = process.env.TRIGGER_API_URL;
const accessToken = process.env.TRIGGER_SECRET_KEY;
configure({ baseURL, accessToken });

const results = [];
async function check(name, fn) {
  try {
    await fn();
    results.push(name);
    console.log(`ok   ${name}`);
  } catch (error) {
    console.error(`FAIL ${name}\n`, error);
    console.log(`${results.length} passed, 1 failed`);
    process.exit(1);
  }
}
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const unique = `${Date.now()}-${Math.random().toString(36).slice(2)}`;

let firstId;
await check("trigger answers a run id", async () => {
  const handle = await tasks.trigger("hello-world", { hello: "world", n: 1 });
  assert.match(handle.id, /^run_/);
  assert.equal(handle.isCached, false);
  assert.ok(handle.publicAccessToken, "publicAccessToken from x-trigger-jwt");
  firstId = handle.id;
});

await check("same idempotency key gives the same run, cached", async () => {
  const key = `same-${unique}`;
  const first = await tasks.trigger("hello-world", { n: 1 }, { idempotencyKey: key });
  const second = await tasks.trigger("hello-world", { n: 2 }, { idempotencyKey: key });
  assert.equal(second.id, first.id);
  assert.equal(second.isCached, true);
});

await check("an expired idempotency key makes a new run", async () => {
  const key = `ttl-${unique}`;
  const first = await tasks.trigger("hello-world", { n: 1 }, { idempotencyKey: key, idempotencyKeyTTL: "1s" });
  await sleep(1500);
  const second = await tasks.trigger("hello-world", { n: 2 }, { idempotencyKey: key, idempotencyKeyTTL: "1s" });
  assert.notEqual(second.id, first.id);
  assert.equal(second.isCached, false);
});

await check("retrieve shows the run QUEUED with its payload decoded", async () => {
  const run = await runs.retrieve(firstId);
  assert.equal(run.id, firstId);
  assert.equal(run.status, "QUEUED");
  assert.deepEqual(run.payload, { hello: "world", n: 1 });
  assert.equal(run.taskIdentifier, "hello-world");
  assert.ok(run.createdAt instanceof Date);
});

await check("options round-trip: tags, delay, metadata, version", async () => {
  const handle = await tasks.trigger(
    "hello-world",
    { d: new Date("2025-01-02T03:04:05.000Z") },
    { tags: ["b", "a"], delay: "1h", metadata: { m: 1 }, version: "20250101.1", machine: "small-1x" },
  );
  const run = await runs.retrieve(handle.id);
  assert.equal(run.status, "DELAYED");
  assert.deepEqual(run.tags, ["a", "b"]);
  assert.deepEqual(run.metadata, { m: 1 });
  assert.equal(run.version, "20250101.1");
  assert.ok(run.delayedUntil instanceof Date);
});

await check("cancel makes the run CANCELED", async () => {
  const handle = await tasks.trigger("hello-world", { cancel: true });
  const answer = await runs.cancel(handle.id);
  assert.equal(answer.id, handle.id);
  const run = await runs.retrieve(handle.id);
  assert.equal(run.status, "CANCELED");
  assert.equal(run.isCancelled, true);
});

await check("list walks every page newest first", async () => {
  const seen = [];
  for await (const run of runs.list({ limit: 2 })) {
    seen.push(run);
  }
  assert.ok(seen.length >= 6, `saw ${seen.length}`);
  assert.equal(new Set(seen.map((r) => r.id)).size, seen.length, "no run twice");
  for (let i = 1; i < seen.length; i++) {
    assert.ok(seen[i - 1].createdAt >= seen[i].createdAt, "newest first");
  }
  assert.ok(seen.some((r) => r.id === firstId));
});

await check("a page's previous page is the page before it", async () => {
  const first = await runs.list({ limit: 2 });
  const second = await first.getNextPage();
  // The SDK sends the earlier page[after] with page[before] here.
  const back = await second.getPreviousPage();
  assert.deepEqual(
    back.data.map((r) => r.id),
    first.data.map((r) => r.id),
  );
});

await check("batch trigger creates every item, listed by batch", async () => {
  const items = [1, 2, 3, 4].map((n) => ({ payload: { n } }));
  const batch = await tasks.batchTrigger("hello-world", items);
  assert.match(batch.batchId, /^batch_/);
  assert.equal(batch.runCount, 4);
  const listed = [];
  for await (const run of runs.list({ batch: batch.batchId })) listed.push(run);
  assert.equal(listed.length, 4);
});

await check("reset releases an idempotency key", async () => {
  const key = `reset-${unique}`;
  const first = await tasks.trigger("hello-world", { n: 1 }, { idempotencyKey: key });
  await idempotencyKeys.reset("hello-world", key, { scope: "global" });
  const second = await tasks.trigger("hello-world", { n: 2 }, { idempotencyKey: key });
  assert.notEqual(second.id, first.id);
  assert.equal(second.isCached, false);
});

await check("a wrong key is refused with 401", async () => {
  await auth.withAuth({ baseURL, accessToken: "tr_dev_not_a_real_key_000000" }, async () => {
    await assert.rejects(tasks.trigger("hello-world", { n: 1 }), (error) => error.status === 401);
  });
});

console.log(`${results.length} passed, 0 failed`);
