// callbox.js against a real server (node --experimental-websocket): a "state" handler that sends
// as soon as the resumed session is open must not overtake what the resume sends again: the
// server applies a cseq only above the last one it applied, and would take those for repeats.
// Prints one JSON line with what happened; tests/client/test_callbox_js.py checks it.
import { CallboxClient } from "./callbox.mjs";

const url = process.argv[2];
const alice = new CallboxClient({ url, userId: "alice" });
const bob = new CallboxClient({ url, userId: "bob" });
await alice.connect();
await bob.connect();
await alice.joinRoom("lobby");
await bob.joinRoom("lobby");
const received = [];
bob.on("room_message", (m) => received.push(m.data.n));

alice.broadcast("lobby", { n: 1 });
await alice.request({ type: "ping", ts: 0 }); // 1 is applied before the pong
const socket = alice._ws;
const write = socket.send.bind(socket);
socket.send = () => {}; // the next frame is lost with the socket
alice.broadcast("lobby", { n: 2 });
socket.send = write;
let sentOnOpen = false;
alice.on("state", (state) => {
  if (state === "open" && !sentOnOpen) {
    sentOnOpen = true;
    alice.broadcast("lobby", { n: 3 }); // an application catching up the moment it is back
  }
});
const resumed = alice.once("resumed");
alice.dropConnection();
await resumed;
await alice.request({ type: "ping", ts: 0 });
await bob.request({ type: "ping", ts: 0 });
await new Promise((resolve) => setTimeout(resolve, 50)); // bob's events run after its pong
console.log(JSON.stringify({ received }));
await alice.close();
await bob.close();
