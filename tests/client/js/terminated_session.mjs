// callbox.js when the deployer removes its user's sessions (the admin API): the server closes
// with 4004, and the client, made to reconnect, does not try to resume: "session_lost"
// {reason: "terminated"}, no "reconnecting". Argument: the server's URL. Prints "ready" once
// connected (the test then removes the user), then one JSON line.
import { CallboxClient } from "./callbox.mjs";

const [url] = process.argv.slice(2);
const bob = new CallboxClient({ url, userId: "bob" });
await bob.connect();
const attempts = [];
bob.on("reconnecting", ({ url: next }) => attempts.push(next));
const closed = new Promise((resolve) => bob.socket.addEventListener("close", (e) => resolve(e.code)));
const lost = bob.once("session_lost");
console.log("ready");
const closeCode = await closed;
const { reason } = await lost;
await new Promise((resolve) => setTimeout(resolve, 600)); // past the first reconnect's backoff
console.log(JSON.stringify({ closeCode, reason, attempts, state: bob.state }));
