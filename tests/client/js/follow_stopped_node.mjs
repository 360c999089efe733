// callbox.js when the node it is on stops (node --experimental-websocket): the node closes with
// 1012 (service restart: it drains), the client moves to the next URL at once, and that node, which does not
// share the first one's sessions, starts a new session: "session_lost" {reason: "not_resumed"},
// then "session", and the client rejoins its rooms there. Arguments: the two nodes' URLs.
// Prints "ready" once connected (the test then stops the first node), then one JSON line.
import { CallboxClient } from "./callbox.mjs";

const [one, two] = process.argv.slice(2);
const alice = new CallboxClient({ url: [one, two], userId: "alice" });
await alice.connect();
await alice.joinRoom("lobby");
const before = { url: alice.url, session: alice.sessionId };
const attempts = [];
const lost = [];
alice.on("reconnecting", ({ url, delayMs }) => attempts.push({ url, delayMs }));
alice.on("session_lost", ({ reason }) => lost.push(reason));
const closed = new Promise((resolve) => alice.socket.addEventListener("close", (e) => resolve(e.code)));
const session = alice.once("session");
const rejoined = alice.once("room_joined");
console.log("ready");
const closeCode = await closed;
const welcome = await session;
await rejoined;
console.log(JSON.stringify({
  before: before.url,
  after: alice.url,
  closeCode,
  attempts,
  lost,
  resumed: welcome.resumed,
  newSession: alice.sessionId !== before.session,
  rooms: [...alice.rooms.keys()],
}));
await alice.close();
