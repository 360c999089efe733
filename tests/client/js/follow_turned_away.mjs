// A node that closes with a code in argv[4] (1013: try again later) is left for the next URL at
// once; any other close waits the backoff first (node --experimental-websocket). alice is on
// the live server, the first of her URLs; the server closes her connection (1009); she waits,
// tries the turning-away node, then the live one. Arguments: the live URL, the node's URL.
// Prints one JSON line; tests/client/test_callbox_js.py checks it.
import { CallboxClient } from "./callbox.mjs";

const [live, node] = process.argv.slice(2);
const alice = new CallboxClient({ url: [live, node], userId: "alice" });
await alice.connect();
const attempts = [];
alice.on("reconnecting", ({ url, delayMs }) => attempts.push({ url, delayMs }));
const resumed = alice.once("resumed");
alice.socket.send("x".repeat(alice.limits.max_message_bytes + 1));
const welcome = await resumed;
console.log(JSON.stringify({ attempts, resumed: welcome.resumed, url: alice.url }));
await alice.close();
