// callbox.js given several URLs, connecting (node --experimental-websocket): the first URL that
// welcomes it is used, one that is refused or says nothing is left for the next, and connect()
// rejects only when none answers. Arguments: a refused URL, a silent one, a live one.
// Prints one JSON line; tests/client/test_callbox_js.py checks it.
import { CallboxClient } from "./callbox.mjs";

const [refused, silent, live] = process.argv.slice(2);
const result = {};

const first = new CallboxClient({ url: [refused, live], userId: "alice" });
await first.connect();
result.refusedThenLive = first.url;
await first.close();

const frozen = new CallboxClient({ url: [silent, live], userId: "bob", attemptTimeoutMs: 500 });
await frozen.connect();
result.silentThenLive = frozen.url;
await frozen.close();

const single = new CallboxClient({ url: live, userId: "carol" });
await single.connect();
result.single = single.urls;
await single.close();

const none = new CallboxClient({ url: [refused, refused], userId: "dave" });
try {
  await none.connect();
  result.none = "connected";
} catch (error) {
  result.none = error.code;
}
result.noneState = none.state;
console.log(JSON.stringify(result));
