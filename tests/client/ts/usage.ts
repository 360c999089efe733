// Type-checked against callbox.d.ts by tests/client/test_typescript.py (tsc --noEmit): what a
// TypeScript application writes with the client, and what the declarations must refuse.
import {
  CallboxClient,
  CallboxError,
  type Call,
  type ClientMessage,
  type ServerMessage,
  type ServerMessageMap,
} from "callbox-client";

export async function main(): Promise<void> {
  const client = new CallboxClient({
    url: ["wss://a.example/ws", "wss://b.example/ws"],
    token: async () => "jwt",
  });
  new CallboxClient({ url: "ws://127.0.0.1:8765/ws", userId: "alice" });
  const welcome: ServerMessageMap["welcome"] = await client.connect();
  const cap: number | undefined = client.limits.max_participants;
  console.log(welcome.session_id, welcome.limits.max_call_duration_ms, cap);

  client.on("state", (state) => console.log(state === "reconnecting"));
  client.on("reconnecting", ({ attempt, delayMs, url }) => console.log(attempt, delayMs, url));
  const next: string = client.url;
  console.log(next, client.urls.length);
  new CallboxClient({ url: ["ws://a/ws", "ws://b/ws"], attemptTimeoutMs: 5000 });
  client.on("call_incoming", (message) => console.log(message.from, message.media.video));
  client.on("error", (error) => console.warn(error.code, error.path ?? ""));
  client.on("session_lost", ({ reason }) => console.log(reason));
  client.on("incoming", async (call: Call) => {
    await call.answer({ media: { audio: true, video: false } });
  });
  const off = client.on("message", (message: ServerMessage) => {
    if (message.type === "call_ended") console.log(message.reason, message.detail);
  });
  off();

  const call = await client.call(["bob", "carol"], { metadata: { subject: "standup" } });
  call.on("stream", ({ userId, stream }) => console.log(userId, stream.id));
  call.on("ended", ({ reason, local }) => console.log(reason, local));
  call.setMuted("audio", true);
  call.hangup("ice_failed");
  await client.call({ room: "standup" });

  try {
    await client.request({ type: "call_invite", call_id: call.id, to: ["dave"] });
  } catch (error) {
    if (error instanceof CallboxError && error.code === "call_full") console.log(error.reply?.message);
  }
  const joined = await client.joinRoom("standup");
  console.log(joined.members, joined.call_id);
  client.broadcast("standup", { text: "hi" });
  client.setPresence("away");
  const hello: ClientMessage = { type: "hello", user_id: "alice", resume: "token", last_seq: 3 };
  client.send({ type: "ice_candidate", call_id: call.id, to: "bob", candidate: null });
  console.log(hello);

  // What the protocol refuses, the types refuse too.
  // @ts-expect-error call_initiate takes `to` or `room`, not both
  client.send({ type: "call_initiate", call_id: "c-12345678", to: ["bob"], room: "r", media: { audio: true, video: true } });
  // @ts-expect-error `resume` needs `last_seq`
  client.send({ type: "hello", user_id: "alice", resume: "token" });
  // @ts-expect-error a hello names its user (token or user_id)
  client.send({ type: "hello" });
  // @ts-expect-error no such presence status
  client.setPresence("busy");
  // @ts-expect-error no such message
  client.send({ type: "call_accept", call_id: "c-12345678" });
}
