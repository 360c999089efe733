// callbox.js against a real server (node --experimental-websocket): a broadcast written to a
// socket that dies before sending it is sent again after the resume and arrives once.
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
alice.broadcast("lobby", { n: 2 });
await alice.request({ type: "ping", ts: 0 }); // 1 and 2 are applied before the pong
const socket = alice._ws;
const write = socket.send.bind(socket);
socket.send = () => {}; // the next frame is lost with the socket
alice.broadcast("lobby", { n: 3 });
socket.send = write;
const resumed = alice.once("resumed");
alice.dropConnection();
const welcome = await resumed;
await alice.request({ type: "ping", ts: 0 });
alice.broadcast("lobby", { n: 4 });
await bob.request({ type: "ping", ts: 0 });
await new Promise((resolve) => setTimeout(resolve, 50)); // bob's events run after its pong
console.log(JSON.stringify({ last_cseq: welcome.last_cseq, sent: alice._cseq, received }));
await alice.close();
await bob.close();
