// The official SDK offloading payloads of 128 KiB or more to the packet store, and reading them back.
// Env: TRIGGER_API_URL, TRIGGER_SECRET_KEY.
// Phase "trigger": 300 KiB payloads by tasks.trigger (an object with a Date, and a string), by
//   tasks.batchTrigger and by batch.trigger; each retrieved intact at once; the SDK's own packet import
//   through both presign routes. Prints a JSON line of the runs and what each should hold (the last line).
// Phase "verify" (argv[3] = that JSON): every run retrieved intact again (after a drain, say).
import assert from "node:assert/strict";
import { batch, configure, runs, tasks } from "@trigger.dev/sdk";
import { apiClientManager, conditionallyExportPacket, conditionallyImportPacket } from "@trigger.dev/core/v3";

configure({ baseURL: process.env.TRIGGER_API_URL, accessToken: process.env.TRIGGER_SECRET_KEY });
const api = () => apiClientManager.clientOrThrow();
const phase = process.argv[2];
const KiB = 1024;

// Each expected payload is rebuilt from its seed, so the JSON handed between phases stays small.
function objectPayload(seed) {
  return { seed, when: new Date(Date.UTC(2026, 0, 2, 3, 4, 5)), blob: `${seed}:`.padEnd(300 * KiB, "x"), list: [1, 2, 3] };
}
const textPayload = (seed) => `${seed}:`.padEnd(150 * KiB, "é"); // 2 bytes each: ~300 KiB of UTF-8
const expected = ({ kind, seed }) => (kind === "text" ? textPayload(seed) : objectPayload(seed));

async function checkRun(run) {
  const retrieved = await runs.retrieve(run.id);
  assert.equal(retrieved.id, run.id);
  assert.equal(retrieved.taskIdentifier, "big");
  assert.deepEqual(retrieved.payload, expected(run), `${run.id} (${run.kind} ${run.seed}) intact`);
}

async function batchRuns(batchId, items) {
  const detail = await batch.retrieve(batchId);
  assert.equal(detail.runs.length, items.length);
  return detail.runs.map((id, i) => ({ id, ...items[i] }));
}

if (phase === "trigger") {
  const tag = `${Date.now()}`;
  const triggered = [];
  const direct = await tasks.trigger("big", objectPayload(`direct-${tag}`));
  triggered.push({ id: direct.id, kind: "object", seed: `direct-${tag}` });
  const text = await tasks.trigger("big", textPayload(`text-${tag}`));
  triggered.push({ id: text.id, kind: "text", seed: `text-${tag}` });

  const byTask = [0, 1, 2].map((i) => ({ kind: "object", seed: `batchTrigger-${tag}-${i}` }));
  const handle = await tasks.batchTrigger("big", byTask.map((item) => ({ payload: expected(item) })));
  triggered.push(...(await batchRuns(handle.batchId, byTask)));

  const byId = [{ kind: "text", seed: `batch-${tag}-0` }, { kind: "object", seed: `batch-${tag}-1` }];
  const mixed = await batch.trigger(byId.map((item) => ({ id: "big", payload: expected(item) })));
  triggered.push(...(await batchRuns(mixed.batchId, byId)));

  for (const run of triggered) await checkRun(run);

  // The SDK's own packet import, as a task run does it: by the run's packet route, and by path.
  const client = api();
  const runUrl = await client.getRunPacketUrl(direct.id, "payload", "unused-fallback-path");
  const fetched = await fetch(runUrl.presignedUrl);
  assert.equal(fetched.headers.get("content-type"), "application/super+json");
  assert.ok((await fetched.text()).length > 300 * KiB);
  const packet = { data: JSON.stringify({ json: objectPayload("manual") }), dataType: "application/super+json" };
  const exported = await conditionallyExportPacket(packet, "manual/payload", undefined, client);
  assert.equal(exported.dataType, "application/store");
  assert.deepEqual(await conditionallyImportPacket(exported, undefined, client), packet);

  console.log(JSON.stringify({ runs: triggered }));
} else if (phase === "verify") {
  const state = JSON.parse(process.argv[3]);
  for (const run of state.runs) await checkRun(run);
  console.log(JSON.stringify({ verified: state.runs.length }));
} else {
  throw new Error(`unknown phase ${phase}`);
}
