// callbox.js resumes a lost connection on the next of its URLs (node --experimental-websocket).
// alice's URLs are a refused one and the live server, where she is. The server closes her
// connection (a frame over its limit: 1009); she tries the refused URL, then the live one, and
// resumes: bob's broadcast, sent meanwhile, arrives once. Arguments: the refused URL, the live one.
// Prints one JSON line; tests/client/test_callbox_js.py checks it.
import { CallboxClient } from "./callbox.mjs";

const [refused, live] = process.argv.slice(2);
const alice = new CallboxClient({ url: [refused, live], userId: "alice" });
const bob = new CallboxClient({ url: live, userId: "bob" });
await alice.connect();
await bob.connect();
await alice.joinRoom("lobby");
await bob.joinRoom("lobby");
const session = alice.sessionId;
const tried = [];
const received = [];
const lost = [];
alice.on("reconnecting", ({ url }) => tried.push(url));
alice.on("room_message", (m) => received.push(m.data.n));
alice.on("session_lost", ({ reason }) => lost.push(reason));
const closed = new Promise((resolve) => alice.socket.addEventListener("close", (e) => resolve(e.code)));
const resumed = alice.once("resumed");

alice.socket.send("x".repeat(alice.limits.max_message_bytes + 1));
const closeCode = await closed;
bob.broadcast("lobby", { n: 1 });
const welcome = await resumed;
await alice.request({ type: "ping", ts: 0 }); // the replay came before the pong
console.log(JSON.stringify({
  closeCode,
  tried,
  url: alice.url,
  resumed: welcome.resumed,
  sameSession: alice.sessionId === session,
  received,
  lost,
}));
await alice.close();
await bob.close();
