// The official SDK while the server's Postgres is frozen: triggers and reads as a client makes them.
// The SDK retries a 503 on its own; every trigger must resolve to a run id, and every run must read
// back (from the buffer) with its payload. Prints a JSON line of the ids (the last line).
import assert from "node:assert/strict";
import { configure, runs, tasks } from "@trigger.dev/sdk";

configure({ baseURL: process.env.TRIGGER_API_URL, accessToken: process.env.TRIGGER_SECRET_KEY });

const ids = [];
for (let i = 0; i < 20; i++) ids.push((await tasks.trigger("outage", { i })).id);
assert.equal(new Set(ids).size, ids.length, "one run per trigger");
for (const [i, id] of ids.entries()) {
  const run = await runs.retrieve(id);
  assert.equal(run.id, id);
  assert.equal(run.status, "QUEUED");
  assert.deepEqual(run.payload, { i });
}
console.log(JSON.stringify({ ids }));
