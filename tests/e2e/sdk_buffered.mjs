// The official SDK against a server whose gate trips at once, with a slow drainer running beside it.
// Phase "mutate": a burst, then cancel / tags / metadata / reschedule on buffered runs, and a full
// runs.list walk while the drain runs. Prints a JSON line of what it did (the last line).
// Phase "verify" (argv[3] = that JSON): after the drain, the changes survived materialisation.
import assert from "node:assert/strict";
import { configure, runs, tasks } from "@trigger.dev/sdk";
import { apiClientManager } from "@trigger.dev/core/v3";

configure({ baseURL: process.env.TRIGGER_API_URL, accessToken: process.env.TRIGGER_SECRET_KEY });
const api = () => apiClientManager.clientOrThrow();
const phase = process.argv[2];

async function walk() {
  const seen = [];
  for await (const run of runs.list({ limit: 7 })) seen.push(run);
  return seen;
}

if (phase === "mutate") {
  const ids = [];
  for (let i = 0; i < 40; i++) ids.push((await tasks.trigger("burst", { i })).id);
  const delayed = (await tasks.trigger("burst", { delayed: true }, { delay: "1h" })).id;
  const cancelled = ids[30];
  const tagged = ids[31];

  const before = await runs.retrieve(cancelled);
  assert.equal(before.status, "QUEUED");
  await runs.cancel(cancelled);
  assert.equal((await runs.retrieve(cancelled)).status, "CANCELED");
  await api().addTags(tagged, { tags: ["vip", "eu"] });
  await api().updateRunMetadata(tagged, { metadata: { step: 1 }, operations: [{ type: "increment", key: "step", value: 2 }] });
  assert.deepEqual((await api().getRunMetadata(tagged)).metadata, { step: 3 });
  const rescheduled = await runs.reschedule(delayed, { delay: "2h" });
  assert.equal(rescheduled.status, "DELAYED");

  const seen = await walk();
  const listed = seen.map((r) => r.id);
  assert.equal(new Set(listed).size, listed.length, "each run once");
  for (const id of [...ids, delayed]) assert.ok(listed.includes(id), `${id} listed`);
  for (let i = 1; i < seen.length; i++) assert.ok(seen[i - 1].createdAt >= seen[i].createdAt, "newest first");
  console.log(JSON.stringify({ ids, delayed, cancelled, tagged, rescheduledUntil: rescheduled.delayedUntil, listed: listed.length }));
} else if (phase === "verify") {
  const state = JSON.parse(process.argv[3]);
  assert.equal((await runs.retrieve(state.cancelled)).status, "CANCELED");
  const tagged = await runs.retrieve(state.tagged);
  assert.deepEqual(tagged.tags, ["eu", "vip"]);
  assert.deepEqual(tagged.metadata, { step: 3 });
  const delayed = await runs.retrieve(state.delayed);
  assert.equal(delayed.status, "DELAYED");
  assert.equal(delayed.delayedUntil.toISOString(), new Date(state.rescheduledUntil).toISOString());
  const seen = await walk();
  assert.equal(new Set(seen.map((r) => r.id)).size, seen.length);
  console.log(JSON.stringify({ verified: true, listed: seen.length }));
} else {
  throw new Error(`unknown phase ${phase}`);
}
