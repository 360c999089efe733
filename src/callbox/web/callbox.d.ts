/**
 * Type declarations of callbox.js, the browser client of the callbox signaling protocol (v1).
 *
 * The protocol's types, between the two "generated" lines, are generated from the JSON Schemas the
 * server validates every message with (tools/gen_typescript.py; a test fails if they drift). The
 * classes after them are written by hand from callbox.js; docs/client-js.md is their guide.
 *
 * ```ts
 * import { CallboxClient } from "callbox-client"; // the package beside this file, or "/callbox.js"
 * const client = new CallboxClient({ userId: "alice" });
 * const welcome = await client.connect();
 * client.on("call_incoming", (message) => console.log(message.from, message.participants));
 * ```
 */

/// <reference lib="dom" />

// BEGIN generated: protocol types (tools/gen_typescript.py, from schemas/)

/**
 * A user's id: 1–64 characters, no whitespace and no control characters. The pattern spells the
 * refused characters out (instead of `\S`) because ECMA-262, Python and Rust disagree on a few of
 * them (U+001C–U+001F, U+0085, U+FEFF).
 */
export type UserId = string;

/**
 * Names one of a user's devices (sessions), chosen by the client: 1–64 characters, no whitespace
 * and no control characters.
 */
export type DeviceId = string;

/**
 * Names a room, chosen by the clients (the first `room_join` creates the room): 1–64 characters, no
 * whitespace and no control characters, like a user id.
 */
export type RoomId = string;

/**
 * Identifies a call; chosen by the caller in `call_initiate`, 8–64 characters of `[A-Za-z0-9_-]`.
 * In glare the lesser `call_id` (string order) survives.
 */
export type CallId = string;

/**
 * Optional request id chosen by the client, at most 64 characters. The server echoes it on its
 * direct reply to that message and on any `error` about it.
 */
export type Rid = string;

/**
 * Optional, chosen by the client: numbers its messages within the session (any increasing numbers;
 * 1, 2, 3 ... is simplest), so that after a resume it can send again, once, those the server never
 * applied: the resumed `welcome` says the last one applied (`last_cseq`). A message whose `cseq` is
 * not above the last one applied is ignored, without a reply: it was applied before (its replies,
 * if any, are replayed by the resume). `hello` and `ping` belong to the connection and carry none.
 */
export type Cseq = number;

/**
 * Position of this message in its session: 1 for the first message after a new session's `welcome`,
 * then increasing by one. A resuming client sends the last `seq` it processed and the server
 * replays the rest with their original `seq`.
 */
export type Seq = number;

/**
 * A non-negative duration in milliseconds. Every integer of the protocol stays within the
 * JavaScript safe-integer range.
 */
export type DurationMs = number;

/**
 * An opaque number chosen by the client (typically `Date.now()` or `performance.now()`), echoed
 * unchanged in `pong` so the client can measure the round trip. Bounded to the range a JavaScript
 * number holds exactly as an integer.
 */
export type Timestamp = number;

/** An SDP blob as produced by `createOffer`/`createAnswer`, relayed verbatim. */
export type Sdp = string;

/**
 * Users to ring or invite: 1–63 distinct user ids (63 others plus the caller make the largest
 * possible call).
 */
export type Recipients = UserId[];

/**
 * Distinct user ids in a call, at most 64: the joined participants (`call_accepted`), or the whole
 * roster, joined and still ringing (`call_incoming`).
 */
export type Participants = UserId[];

/** Users whose presence to watch or stop watching: 1–100 distinct user ids. */
export type PresenceUsers = UserId[];

/** Which media the sender intends to send. */
export type Media = {
  /** Audio is sent. */
  audio: boolean;
  /** Video is sent. */
  video: boolean;
};

/**
 * Application data attached to a call by the caller and relayed verbatim to the callees: a flat
 * object of at most 16 properties, names of at most 64 characters, values a string of at most 1024
 * characters, a number (within the JavaScript safe-integer range), a boolean or null.
 */
export type Metadata = { [name: string]: string | number | boolean | null };

/** An RTCIceServer, passed by the client straight to `new RTCPeerConnection({iceServers})`. */
export type IceServer = {
  /** STUN/TURN URLs, e.g. `turn:turn.example.com:3478?transport=udp`. */
  urls: string[];
  /** TURN username (TURN REST: `<unix expiry>:<user id>`). */
  username?: string;
  /** TURN password (TURN REST: base64 HMAC-SHA1 of the username). */
  credential?: string;
};

/** The ICE servers to use, at most 16; empty when the server configures none. */
export type IceServers = IceServer[];

/** The server's limits, announced in `welcome` so clients never guess them. */
export type Limits = {
  /** Largest frame accepted; a larger one closes the socket with 1009. */
  max_message_bytes: number;
  /** A call ends with `max_duration` after this long (`call_expiring` warns first). */
  max_call_duration_ms: number;
  /** An invitation not answered within this time drops out with `ring_timeout`. */
  ring_timeout_ms: number;
  /** How long a lost session stays resumable (and counts as connected). */
  reconnect_grace_ms: number;
  /** Most joined participants in one call, the caller included. */
  max_participants: number;
  /** Most calls one user may be part of at once. */
  max_calls_per_user: number;
  /** Sustained client message rate before `rate_limited`. */
  messages_per_second: number;
  /** Messages allowed in a burst above the sustained rate. */
  message_burst: number;
  /** Most rooms one session may be in at once; a `room_join` beyond it gets `limit_reached`. */
  max_rooms_per_session: number;
  /** Most users in one room; a `room_join` beyond it gets `room_full`. */
  max_room_members: number;
  /**
   * Largest `room_broadcast.data`, in bytes of its JSON encoding; a larger one gets
   * `message_too_large` with `path` `/data`.
   */
  max_broadcast_bytes: number;
  /**
   * Sustained `room_broadcast` rate of one session (bursts of twice that) before `rate_limited`.
   */
  broadcasts_per_second: number;
  /**
   * Most users one session may watch at once (`presence_subscribe`); subscribing beyond it gets
   * `limit_reached`.
   */
  max_presence_subscriptions: number;
  /** Most messages held per session for a resume (see `ack`). */
  replay_buffer_messages: number;
  /** Most bytes of messages held per session for a resume (one larger message is held alone). */
  replay_buffer_bytes: number;
  /**
   * Most arrays and objects a value may be nested in, the message itself counted; a deeper one gets
   * `invalid_message` with the `path` of the first container too deep.
   */
  max_nesting_depth: number;
  /** A connection that sends no `hello` within this time of opening is closed with 4003. */
  hello_timeout_ms: number;
};

/**
 * An ICE candidate exactly as the browser's `icecandidate` event gave it
 * (`event.candidate.toJSON()`); relayed verbatim, never normalized.
 */
export type IceCandidateInit = {
  /**
   * The `candidate:` attribute line; may be empty (some browsers signal the end of a generation
   * that way).
   */
  candidate: string;
  /** The media stream identification tag, or null. */
  sdpMid?: string | null;
  /** Index of the m-line the candidate belongs to, or null. */
  sdpMLineIndex?: number | null;
  /** The ICE username fragment (ufrag), or null. */
  usernameFragment?: string | null;
};

/** An RTCIceCandidateInit, or null for end-of-candidates. */
export type IceCandidate = null | IceCandidateInit;

/**
 * Why a callee refuses a call (`call_reject`).
 *
 * - `declined`: the user declined the call.
 * - `busy`: the user cannot take the call now (for example, busy in a call outside callbox).
 */
export type RejectReason = "declined" | "busy";

/**
 * Why a participant left a call (`hangup`); relayed to the others as `call_ended.detail`.
 *
 * - `normal`: the user hung up.
 * - `ice_failed`: ICE failed: no connectivity could be established or restored.
 * - `media_failed`: media could not be captured or negotiated (getUserMedia or SDP failure).
 * - `error`: any other client-side failure.
 */
export type HangupReason = "normal" | "ice_failed" | "media_failed" | "error";

/**
 * Why an invitee dropped out before joining (`call_rejected`, in 1:1 and group calls alike).
 *
 * - `declined`: the invitee declined (`call_reject` reason `declined`).
 * - `busy`: the invitee is in another call, or rejected with `busy`.
 * - `offline`: the invitee has no connected device.
 * - `ring_timeout`: the invitee did not answer within `limits.ring_timeout_ms`.
 * - `call_full`: the invitee answered, but joining would have exceeded `limits.max_participants`.
 */
export type DropoutReason =
  | "declined"
  | "busy"
  | "offline"
  | "ring_timeout"
  | "call_full";

/**
 * Why a joined participant left a group call that goes on (`participant_left`).
 *
 * - `hangup`: the participant hung up.
 * - `disconnected`: the participant's session ended without a hangup: `bye`, or a lost connection
 * not resumed within `limits.reconnect_grace_ms`.
 */
export type LeaveReason = "hangup" | "disconnected";

/**
 * What a device says of its user's availability (`presence_set`); watchers see the merge over all
 * the user's devices (`userStatus`).
 *
 * - `online`: available.
 * - `away`: the user is not at this device (idle, locked screen).
 * - `dnd`: do not disturb.
 */
export type PresenceStatus = "online" | "away" | "dnd";

/**
 * What watchers see of a user (`presence.status`): the merge over all of the user's devices
 * (sessions). No session: `offline`; any device in a call: `in_call`; otherwise the most available
 * of the devices' `presence_set` statuses, `online` before `away` before `dnd`.
 *
 * - `online`: at least one device is `online`, and none is in a call.
 * - `away`: the most available device is `away`, and none is in a call.
 * - `dnd`: every device is `dnd`, and none is in a call.
 * - `in_call`: at least one of the user's devices is in a call.
 * - `offline`: the user has no session; only once the last one has ended for good (`bye`, or a lost
 * connection not resumed within `limits.reconnect_grace_ms`).
 */
export type UserStatus = "online" | "away" | "dnd" | "in_call" | "offline";

/**
 * Why the call is over for the recipient (`call_ended`).
 *
 * - `hangup`: a participant hung up (`by` says who, `detail` gives their hangup reason); in a group
 * call, also sent to the one who hung up.
 * - `rejected`: the callee of a 1:1 call declined.
 * - `busy`: the callee of a 1:1 call is in another call, or rejected with `busy`.
 * - `ring_timeout`: nobody answered within `limits.ring_timeout_ms`.
 * - `max_duration`: the call reached `limits.max_call_duration_ms`.
 * - `disconnected`: the other side's session ended without a hangup (`bye`, or a lost connection
 * not resumed in time), or too few participants remain.
 * - `offline`: the callee has no connected device.
 * - `answered_elsewhere`: another device of the same user answered; stop ringing here.
 * - `merged`: glare: two users called each other at once; this call was merged into the one with
 * the lesser `call_id`, for which `call_accepted` follows.
 * - `call_full`: this user's answer or join would have exceeded `limits.max_participants`.
 * - `error`: the server ended the call because of an internal failure.
 * - `terminated`: the deployer's backend ended it through the admin API (`DELETE
 * /api/v1/calls/{call_id}`, or the removal of a party's sessions: `by` then names that user, whose
 * sockets are closed with 4004).
 */
export type EndReason =
  | "hangup"
  | "rejected"
  | "busy"
  | "ring_timeout"
  | "max_duration"
  | "disconnected"
  | "offline"
  | "answered_elsewhere"
  | "merged"
  | "call_full"
  | "error"
  | "terminated";

/**
 * What went wrong (`error.code`).
 *
 * - `invalid_json`: the frame is not valid UTF-8 JSON.
 * - `invalid_message`: the frame is binary, or the JSON is not an object with a string `type`, or a
 * field breaks the message's schema (`path` points at it).
 * - `unknown_type`: `type` names no client message.
 * - `not_authenticated`: a message other than `hello` arrived before `welcome`.
 * - `auth_failed`: the token is missing, invalid or expired, or names another user than the session
 * to resume; the connection is closed with 4001.
 * - `unknown_call`: no call has that `call_id`.
 * - `not_in_call`: the sender, or the relay's `to`, is not part of the call.
 * - `invalid_state`: the message makes no sense in the call's state (an `sdp_answer` before
 * `call_accepted`, a relay after `call_ended`, a second `hello`).
 * - `call_exists`: a call with that `call_id` already exists.
 * - `call_full`: the call would exceed `limits.max_participants` (an answer or join), or could
 * never fit (`call_initiate`, `call_invite`).
 * - `user_busy`: a user the request involves cannot take part in another call.
 * - `user_offline`: a user the request names has no connected device.
 * - `rate_limited`: the connection exceeded `limits.messages_per_second` (burst
 * `limits.message_burst`), or its `room_broadcast`s exceeded `limits.broadcasts_per_second`; the
 * message was dropped.
 * - `message_too_large`: a `room_broadcast`'s `data` encodes to more than
 * `limits.max_broadcast_bytes` (`path` is `/data`); that broadcast is refused and the connection
 * stays open. A WebSocket message over `limits.max_message_bytes` gets no `error`: the connection
 * is closed with 1009.
 * - `session_limit`: the user already has as many sessions (devices) as the server allows; the
 * connection is then closed with 1008.
 * - `not_in_room`: the sender's session is not a member of the room the message names
 * (`room_leave`, `room_broadcast`, `call_initiate` with `room`).
 * - `room_full`: the room already has `limits.max_room_members` users (`room_join`).
 * - `limit_reached`: a per-session limit would be exceeded: rooms (`limits.max_rooms_per_session`)
 * or presence subscriptions (`limits.max_presence_subscriptions`); `message` says which.
 * - `internal`: the server failed while handling the message (a bug, which it logged); the
 * connection stays open and the message may be sent again, though whatever part of it had been
 * carried out before the failure stays done.
 * - `unavailable`: the server could not reach the store it shares with other servers (a cluster) in
 * time; the message was not applied, nothing of it will happen later, and it may be sent again.
 */
export type ErrorCode =
  | "invalid_json"
  | "invalid_message"
  | "unknown_type"
  | "not_authenticated"
  | "auth_failed"
  | "unknown_call"
  | "not_in_call"
  | "invalid_state"
  | "call_exists"
  | "call_full"
  | "user_busy"
  | "user_offline"
  | "rate_limited"
  | "message_too_large"
  | "session_limit"
  | "not_in_room"
  | "room_full"
  | "limit_reached"
  | "internal"
  | "unavailable";

/**
 * Any message a client sends to the server (one JSON object per WebSocket text frame). By `type`.
 */
export interface ClientMessageMap {
  /**
   * First message of a connection: authenticates and opens (or resumes) a session. Nothing else is
   * accepted before `welcome`. Carries `token` (a JWT whose `sub` is the user id; required when the
   * server has an auth secret) or `user_id` (development mode only). To resume, send `resume` (the
   * `resume_token` of the latest `welcome`) together with `last_seq` (the last `seq` processed);
   * resuming never bypasses auth.
   */
  hello: {
    type: "hello";
    /** Auth token (JWT, HS256 by default, `sub` and `exp` required). */
    token?: string;
    /** The user id, accepted in development mode only. */
    user_id?: UserId;
    /** Names this device among the user's sessions. */
    device_id?: DeviceId;
    /** The `resume_token` of the latest `welcome`, to resume its session. */
    resume?: string;
    /** The last `seq` processed (0 if none); required with `resume`. */
    last_seq?: number;
    /** Request id, echoed on the reply and on any `error` about this message. */
    rid?: Rid;
  }
    & ({ token: string } | { user_id: UserId })
    & ({ resume?: undefined } | { resume: string; last_seq: number })
    & ({ last_seq?: undefined } | { last_seq: number; resume: string });
  /** Application-level heartbeat; the server answers `pong` with the same `ts` and `rid`. */
  ping: {
    type: "ping";
    /** Echoed in `pong`. */
    ts?: Timestamp;
    /** Request id, echoed on the reply and on any `error` about this message. */
    rid?: Rid;
  };
  /**
   * Ends the session now: no resume; its calls end (`disconnected` for the others); the server
   * closes the socket with 1000. Any other loss of the connection leaves the session resumable for
   * `limits.reconnect_grace_ms`.
   */
  bye: {
    type: "bye";
    /** Request id, echoed on the reply and on any `error` about this message. */
    rid?: Rid;
    /** Client sequence number: applied once, ignored if sent again. */
    cseq?: Cseq;
  };
  /**
   * Says the client has processed every server message up to `last_seq`, so the server need no
   * longer hold them for a resume. Optional: without acks the server keeps the newest
   * `limits.replay_buffer_messages` messages; with them it holds only what the client has not
   * confirmed, and a client away while many messages arrive is less likely to find them gone. No
   * reply; an `ack` ahead of the last `seq` sent gets `invalid_state`.
   */
  ack: {
    type: "ack";
    /** The last `seq` processed (0 if none). */
    last_seq: number;
    /** Request id, echoed on any `error` about this message. */
    rid?: Rid;
    /** Client sequence number: applied once, ignored if sent again. */
    cseq?: Cseq;
  };
  /**
   * Starts a call: rings every user of `to` (one for a 1:1 call, several for a group call), or with
   * `room` every other member of that room, on all their connected devices. Exactly one of `to` and
   * `room` is given. The server replies `call_ringing` naming who is being rung, and
   * `call_rejected` for each invitee who is busy or offline; if nobody can be rung, `call_ended`
   * follows at once.
   */
  call_initiate: {
    type: "call_initiate";
    /** Chosen by the caller; must not be in use. */
    call_id: CallId;
    /** Users to ring; not with `room`. */
    to?: Recipients;
    /** Ring every other member of this room (the sender must be one); not with `to`. */
    room?: RoomId;
    /** What the caller will send. */
    media: Media;
    /** Relayed to the callees in `call_incoming`. */
    metadata?: Metadata;
    /** Request id, echoed on the reply and on any `error` about this message. */
    rid?: Rid;
    /** Client sequence number: applied once, ignored if sent again. */
    cseq?: Cseq;
  }
    & ({ to: Recipients; room?: undefined } | { room: RoomId; to?: undefined });
  /**
   * Accepts an incoming call (or a group call invitation). The first device of the user to answer
   * joins; the user's other devices get `call_ended` `answered_elsewhere`.
   */
  call_answer: {
    type: "call_answer";
    call_id: CallId;
    /** What the callee will send, if it differs. */
    media?: Media;
    /** Request id, echoed on the reply and on any `error` about this message. */
    rid?: Rid;
    /** Client sequence number: applied once, ignored if sent again. */
    cseq?: Cseq;
  };
  /**
   * Refuses an incoming call. A 1:1 call then ends for both sides; in a group call the invitee
   * drops out alone (`call_rejected` to the joined participants).
   */
  call_reject: {
    type: "call_reject";
    call_id: CallId;
    reason: RejectReason;
    /** Request id, echoed on the reply and on any `error` about this message. */
    rid?: Rid;
    /** Client sequence number: applied once, ignored if sent again. */
    cseq?: Cseq;
  };
  /** Adds people to a running call: each user of `to` is rung (`call_incoming`). */
  call_invite: {
    type: "call_invite";
    call_id: CallId;
    /** Users to invite. */
    to: Recipients;
    /** Request id, echoed on the reply and on any `error` about this message. */
    rid?: Rid;
    /** Client sequence number: applied once, ignored if sent again. */
    cseq?: Cseq;
  };
  /**
   * Joins a call: a group call the sender was invited to (like call_answer), or the running call of
   * a room the sender is a member of (room_joined names it), without having been rung.
   */
  call_join: {
    type: "call_join";
    call_id: CallId;
    /** Request id, echoed on the reply and on any `error` about this message. */
    rid?: Rid;
    /** Client sequence number: applied once, ignored if sent again. */
    cseq?: Cseq;
  };
  /**
   * Leaves a call. A 1:1 call then ends for both (`call_ended` `hangup`); a group call goes on
   * while two participants remain (`participant_left` `hangup`).
   */
  hangup: {
    type: "hangup";
    call_id: CallId;
    /** Why; `normal` when absent. */
    reason?: HangupReason;
    /** Request id, echoed on the reply and on any `error` about this message. */
    rid?: Rid;
    /** Client sequence number: applied once, ignored if sent again. */
    cseq?: Cseq;
  };
  /**
   * An SDP offer for one participant of the call, relayed to it with `from`. A participant who
   * joins a group call offers to each participant already in it; a renegotiation (ICE restart) is
   * another offer in the same call.
   */
  sdp_offer: {
    type: "sdp_offer";
    call_id: CallId;
    /** The participant to relay to. */
    to: UserId;
    sdp: Sdp;
    /** Request id, echoed on the reply and on any `error` about this message. */
    rid?: Rid;
    /** Client sequence number: applied once, ignored if sent again. */
    cseq?: Cseq;
  };
  /** The SDP answer to an offer, relayed to the offerer with `from`. */
  sdp_answer: {
    type: "sdp_answer";
    call_id: CallId;
    /** The participant to relay to (the offerer). */
    to: UserId;
    sdp: Sdp;
    /** Request id, echoed on the reply and on any `error` about this message. */
    rid?: Rid;
    /** Client sequence number: applied once, ignored if sent again. */
    cseq?: Cseq;
  };
  /** A trickled ICE candidate for one participant of the call, relayed to it with `from`. */
  ice_candidate: {
    type: "ice_candidate";
    call_id: CallId;
    /** The participant to relay to. */
    to: UserId;
    candidate: IceCandidate;
    /** Request id, echoed on the reply and on any `error` about this message. */
    rid?: Rid;
    /** Client sequence number: applied once, ignored if sent again. */
    cseq?: Cseq;
  };
  /**
   * Joins a room; the first `room_join` creates it. The server replies `room_joined` (the members,
   * and the room's running call if any); the other members get `room_member_joined`. Refused with
   * `room_full` when the room has `limits.max_room_members` users, `limit_reached` when the session
   * is already in `limits.max_rooms_per_session` rooms.
   */
  room_join: {
    type: "room_join";
    room: RoomId;
    /** Request id, echoed on the reply and on any `error` about this message. */
    rid?: Rid;
    /** Client sequence number: applied once, ignored if sent again. */
    cseq?: Cseq;
  };
  /**
   * Leaves a room. The server replies `room_left`; the remaining members get `room_member_left`.
   */
  room_leave: {
    type: "room_leave";
    room: RoomId;
    /** Request id, echoed on the reply and on any `error` about this message. */
    rid?: Rid;
    /** Client sequence number: applied once, ignored if sent again. */
    cseq?: Cseq;
  };
  /**
   * Sends `data` to every other member of a room the sender is in (`room_message`, with `from`);
   * the sender gets no copy. Limited to `limits.broadcasts_per_second` per session.
   */
  room_broadcast: {
    type: "room_broadcast";
    room: RoomId;
    /**
     * Any JSON value, relayed verbatim. Its encoded size is bounded by
     * `limits.max_broadcast_bytes`, which the schema cannot express: the server enforces it,
     * refusing a larger one with `error` `message_too_large`, `path` `/data`.
     */
    data: unknown;
    /** Request id, echoed on the reply and on any `error` about this message. */
    rid?: Rid;
    /** Client sequence number: applied once, ignored if sent again. */
    cseq?: Cseq;
  };
  /**
   * Watches the presence of `users`: the server replies with the current state of each (`presence`,
   * carrying this message's `rid`), then sends a `presence` at every change. Refused with
   * `limit_reached` when the session would watch more than `limits.max_presence_subscriptions`
   * users.
   */
  presence_subscribe: {
    type: "presence_subscribe";
    /** Users to watch. */
    users: PresenceUsers;
    /** Request id, echoed on the reply and on any `error` about this message. */
    rid?: Rid;
    /** Client sequence number: applied once, ignored if sent again. */
    cseq?: Cseq;
  };
  /** Stops watching the presence of `users`. */
  presence_unsubscribe: {
    type: "presence_unsubscribe";
    /** Users to stop watching. */
    users: PresenceUsers;
    /** Request id, echoed on the reply and on any `error` about this message. */
    rid?: Rid;
    /** Client sequence number: applied once, ignored if sent again. */
    cseq?: Cseq;
  };
  /**
   * Says what this device reports of its user's availability. Watchers see the merge over all the
   * user's devices (`presence`).
   */
  presence_set: {
    type: "presence_set";
    status: PresenceStatus;
    /** Request id, echoed on the reply and on any `error` about this message. */
    rid?: Rid;
    /** Client sequence number: applied once, ignored if sent again. */
    cseq?: Cseq;
  };
}

/** Any client message. */
export type ClientMessage = ClientMessageMap[keyof ClientMessageMap];

/**
 * Any message the server sends to a client (one JSON object per WebSocket text frame). By `type`.
 */
export interface ServerMessageMap {
  /**
   * Answers `hello`: the session is open. Belongs to the connection, so it has no `seq`; the
   * session's messages start at `seq` 1 after it (a resumed session replays what follows `last_seq`
   * with the original `seq`).
   */
  welcome: {
    type: "welcome";
    /** The authenticated user. */
    user_id: UserId;
    /** Identifies the session (stable across resumes). */
    session_id: string;
    /** Secret to resume this session with (`hello.resume`); only the latest one is valid. */
    resume_token: string;
    /**
     * True when the session of `hello.resume` was resumed and its missed messages follow; false
     * when a new session started (unknown or expired token, history no longer held, `last_seq`
     * ahead of the server).
     */
    resumed: boolean;
    ice_servers: IceServers;
    /**
     * The server sends a WebSocket ping this often (browsers and WebSocket libraries answer
     * automatically). A connection from which nothing at all arrives, not even a pong, for twice
     * this long is closed with 1011 "heartbeat timeout", and its session enters the reconnect grace
     * period.
     */
    heartbeat_ms: DurationMs;
    limits: Limits;
    /**
     * On a resumed session: the highest `cseq` of the client's messages the server has applied (0
     * if none). The client sends its numbered messages above it again, in order, once; they were
     * never applied. Absent on a new session.
     */
    last_cseq?: number;
    /**
     * In a cluster (several servers sharing one store), the node that served this `welcome`: for
     * logs and support. Any node can resume the session; absent from a single server.
     */
    node?: string;
    /** The `rid` of the client message this replies to, if it had one. */
    rid?: Rid;
  };
  /** Fresh TURN credentials, pushed before the ones from `welcome` expire. */
  ice_servers: {
    type: "ice_servers";
    ice_servers: IceServers;
    seq: Seq;
  };
  /** Answers `ping` with its `ts` and `rid`. Belongs to the connection: no `seq`. */
  pong: {
    type: "pong";
    /** The `ping`'s `ts`. */
    ts?: Timestamp;
    /** The `rid` of the client message this replies to, if it had one. */
    rid?: Rid;
  };
  /**
   * Answers `call_initiate` (and `call_invite`): the call exists and these users are being rung.
   */
  call_ringing: {
    type: "call_ringing";
    call_id: CallId;
    /** Who is being rung. */
    to: Recipients;
    /**
     * Those of `to` who have no connected device and are being reached through the deployer's
     * backend (a push notification: offline ringing, docs/backend.md); absent when none is. Each
     * rings for the ring timeout: a device of theirs that connects meanwhile gets `call_incoming`;
     * if none comes, they drop out with reason `offline`. Only a server with offline ringing
     * configured sends it.
     */
    offline?: Recipients;
    /** The `rid` of the client message this replies to, if it had one. */
    rid?: Rid;
    seq: Seq;
  };
  /**
   * Rings a callee, on each of their connected devices. Answer with `call_answer`, refuse with
   * `call_reject`.
   */
  call_incoming: {
    type: "call_incoming";
    call_id: CallId;
    /** Who started the call. */
    from: UserId;
    /**
     * Everyone in the call: those who have joined and those being rung, this user included, in the
     * order they entered it.
     */
    participants: Participants;
    /** What the caller sends. */
    media: Media;
    /** Time left to answer before the invitation times out. */
    expires_in_ms: DurationMs;
    /** The caller's `call_initiate.metadata`. */
    metadata?: Metadata;
    seq: Seq;
  };
  /**
   * Someone joined the call: sent to every joined participant, the one who answered included. Also
   * what both sides of a glare get for the surviving call.
   */
  call_accepted: {
    type: "call_accepted";
    call_id: CallId;
    /**
     * Who answered or joined. That participant sends an `sdp_offer` to each other joined
     * participant (the newcomer offers), so two peers never offer to each other at once.
     */
    by: UserId;
    /** Every joined participant. */
    participants: Participants;
    /** The `rid` of the client message this replies to, if it had one. */
    rid?: Rid;
    seq: Seq;
  };
  /**
   * An invitee dropped out before joining (declined, busy, offline, did not answer in time, or the
   * call was full); sent to the joined participants, in 1:1 and group calls alike. When that leaves
   * nobody to wait for (always, in a 1:1 call) a `call_ended` follows; otherwise the call goes on.
   */
  call_rejected: {
    type: "call_rejected";
    call_id: CallId;
    /** The invitee who dropped out. */
    by: UserId;
    reason: DropoutReason;
    /** The `rid` of the client message this replies to, if it had one. */
    rid?: Rid;
    seq: Seq;
  };
  /** A participant joined a group call the recipient is in. */
  participant_joined: {
    type: "participant_joined";
    call_id: CallId;
    user_id: UserId;
    seq: Seq;
  };
  /** A joined participant left a group call that goes on. */
  participant_left: {
    type: "participant_left";
    call_id: CallId;
    user_id: UserId;
    reason: LeaveReason;
    seq: Seq;
  };
  /** Warns that `limits.max_call_duration_ms` will end the call (`max_duration`). */
  call_expiring: {
    type: "call_expiring";
    call_id: CallId;
    /** Time left before the call ends. */
    ends_in_ms: DurationMs;
    seq: Seq;
  };
  /**
   * The call is over for the recipient. Every session involved (joined, or still ringing) gets
   * exactly one, the one who hung up or rejected included, so every device stops ringing and every
   * UI can close.
   */
  call_ended: {
    type: "call_ended";
    call_id: CallId;
    reason: EndReason;
    /** Who caused the end, when a user did. */
    by?: UserId;
    /** With `hangup`: the `hangup.reason`. */
    detail?: HangupReason;
    /** The `rid` of the client message this replies to, if it had one. */
    rid?: Rid;
    seq: Seq;
  };
  /** An SDP offer relayed from another participant of the call. */
  sdp_offer: {
    type: "sdp_offer";
    call_id: CallId;
    /** The participant who sent it. */
    from: UserId;
    sdp: Sdp;
    seq: Seq;
  };
  /** An SDP answer relayed from another participant of the call. */
  sdp_answer: {
    type: "sdp_answer";
    call_id: CallId;
    /** The participant who sent it. */
    from: UserId;
    sdp: Sdp;
    seq: Seq;
  };
  /** An ICE candidate (or end-of-candidates) relayed from another participant of the call. */
  ice_candidate: {
    type: "ice_candidate";
    call_id: CallId;
    /** The participant who sent it. */
    from: UserId;
    candidate: IceCandidate;
    seq: Seq;
  };
  /** Answers `room_join`: the session is a member of the room. */
  room_joined: {
    type: "room_joined";
    room: RoomId;
    /**
     * Distinct user ids of the room's members, the joiner included; at most 1000 (the most
     * `limits.max_room_members` can be).
     */
    members: UserId[];
    /** The room's running call, if any: join it with `call_join`. */
    call_id?: CallId;
    /** The `rid` of the client message this replies to, if it had one. */
    rid?: Rid;
    seq: Seq;
  };
  /**
   * Answers `room_leave`: the session is no longer a member of the room. An extension of the
   * protocol outline, so that `room_leave` is answered like `room_join`.
   */
  room_left: {
    type: "room_left";
    room: RoomId;
    /** The `rid` of the client message this replies to, if it had one. */
    rid?: Rid;
    seq: Seq;
  };
  /** A user joined a room the recipient is in. */
  room_member_joined: {
    type: "room_member_joined";
    room: RoomId;
    user_id: UserId;
    seq: Seq;
  };
  /** A user left a room the recipient is in. */
  room_member_left: {
    type: "room_member_left";
    room: RoomId;
    user_id: UserId;
    seq: Seq;
  };
  /**
   * Data broadcast by another member of a room the recipient is in (`room_broadcast`); sent to
   * every member but the sender.
   */
  room_message: {
    type: "room_message";
    room: RoomId;
    /** The member who broadcast it. */
    from: UserId;
    /**
     * The `room_broadcast.data`, relayed verbatim: any JSON value, its encoding at most
     * `limits.max_broadcast_bytes` bytes.
     */
    data: unknown;
    seq: Seq;
  };
  /**
   * A watched user's presence: the current state in reply to `presence_subscribe` (one per user,
   * carrying its `rid`), then one at every change.
   */
  presence: {
    type: "presence";
    /** The watched user. */
    user_id: UserId;
    status: UserStatus;
    /**
     * Unix time in milliseconds: now while the user is online in some form (any status but
     * `offline`), the moment their last session ended when `offline`; null if the user was never
     * seen.
     */
    last_seen: number | null;
    /** The `rid` of the client message this replies to, if it had one. */
    rid?: Rid;
    seq: Seq;
  };
  /**
   * A client message was refused. Carries the offending message's `rid` when it had a valid one,
   * and `seq` only once the session exists (an error before `welcome` has none).
   */
  error: {
    type: "error";
    code: ErrorCode;
    /** Human-readable: what was wrong and where. */
    message: string;
    /** JSON pointer (RFC 6901) of the offending field, `""` for the whole message. */
    path?: string;
    /** The `rid` of the client message this replies to, if it had one. */
    rid?: Rid;
    /** Present once the session exists. */
    seq?: Seq;
  };
}

/** Any server message. */
export type ServerMessage = ServerMessageMap[keyof ServerMessageMap];

// END generated: protocol types

// ---------------------------------------------------------------------------------------------
// callbox.js, by hand

/** The connection's state (the client's `"state"` event). */
export type ConnectionState = "idle" | "connecting" | "open" | "reconnecting" | "closed";

/**
 * A call's state (the call's `"state"` event). `calling`: call_initiate sent; `ringing`: the server
 * rings someone; `incoming`: we are being rung; `joining`: call_answer or call_join sent; `active`:
 * we are a joined participant; `ended`: over (see `Call.endReason`).
 */
export type CallState = "calling" | "ringing" | "incoming" | "joining" | "active" | "ended";

/** Why the client's session ended (`"session_lost"` event); its calls ended locally. */
export type SessionLostReason =
  | "not_resumed"
  | "grace_expired"
  | "auth_failed"
  | "taken_over"
  | "refused"
  | "terminated"
  | "closed";

/** A `CallboxError`'s code when no server `error` was involved. */
export type LocalErrorCode =
  | "timeout"
  | "session_lost"
  | "closed"
  | "taken_over"
  | "refused"
  | "terminated";

/** The arguments of `emit` after the event's name: its value, or none when that is `undefined`. */
type Args<Value> = Value extends undefined ? [] : [value: Value];

/** A minimal event emitter; `on` returns a function that removes the handler. */
export class Emitter<Events extends object = Record<string, unknown>> {
  on<K extends keyof Events & string>(type: K, handler: (value: Events[K]) => void): () => void;
  off<K extends keyof Events & string>(type: K, handler: (value: Events[K]) => void): void;
  /** The next `type` event, as a promise. */
  once<K extends keyof Events & string>(type: K): Promise<Events[K]>;
  emit<K extends keyof Events & string>(type: K, ...value: Args<Events[K]>): void;
}

/** An `error` from the server, or a request that could not complete, as an exception. */
export class CallboxError extends Error {
  constructor(
    code: ErrorCode | LocalErrorCode,
    message: string,
    details?: { path?: string; rid?: string; reply?: ServerMessageMap["error"] },
  );
  readonly name: "CallboxError";
  readonly code: ErrorCode | LocalErrorCode;
  /** JSON pointer of the offending field, when the server named one. */
  readonly path: string | undefined;
  readonly rid: string | undefined;
  /** The server's `error` message, when there was one. */
  readonly reply: ServerMessageMap["error"] | undefined;
}

/** A fresh call id: 8–64 characters of [A-Za-z0-9_-]. */
export function newCallId(): CallId;

/** `ws(s)://<this page's host>/ws`, the endpoint of the server that served the page. */
export function defaultUrl(): string;

/** The options of `new CallboxClient(options)`. */
export interface ClientOptions {
  /** The WebSocket endpoint, or a list of endpoints of one deployment; default `defaultUrl()`. */
  url?: string | string[];
  /** Development mode: the user id to sign in as. */
  userId?: UserId;
  /** A JWT, or a function returning a fresh one (called on every connect, resumes included). */
  token?: string | (() => string | Promise<string>);
  deviceId?: DeviceId;
  /** Resume after a lost socket (default true), on the next URL of `url`'s list. */
  reconnect?: boolean;
  /** How long one attempt to reach a server may take before the next URL is tried (default
   * 10,000 ms): a frozen node is given up. */
  attemptTimeoutMs?: number;
  /** After a session is lost, watch presence and rejoin rooms in the new one (default true). */
  restore?: boolean;
  /** Merged into every RTCPeerConnection's configuration (`iceServers` come from the server). */
  rtcConfiguration?: RTCConfiguration;
  /** How calls get their local media (default `navigator.mediaDevices.getUserMedia`). */
  getUserMedia?: (media: Media) => Promise<MediaStream>;
}

/** The client's events: every server message by its `type`, and the client's own. */
export interface CallboxClientEventMap extends ServerMessageMap {
  /** Every server message (replayed ones once, in order). */
  message: ServerMessage;
  state: ConnectionState;
  /** A new session's `welcome`. */
  session: ServerMessageMap["welcome"];
  /** A resume succeeded. */
  resumed: ServerMessageMap["welcome"];
  session_lost: { reason: SessionLostReason };
  /** The next attempt, to `url`, starts in `delayMs`. */
  reconnecting: { attempt: number; delayMs: number; url: string };
  /** A `Call` was created: outgoing, incoming or joined. */
  call: Call;
  /** Someone is ringing us. */
  incoming: Call;
}

/** The options of `client.call(to, options)`. */
export interface CallOptions {
  /** Default `{ audio: true, video: true }`. */
  media?: Media;
  /** Sent to the callees as is. */
  metadata?: Metadata;
  /** Use this stream instead of getUserMedia; the call then leaves its tracks running. */
  stream?: MediaStream;
  callId?: CallId;
}

/** The options of `call.answer()` and `client.join()`. */
export interface MediaOptions {
  media?: Media;
  stream?: MediaStream;
}

/** One signed-in session on a callbox server: resume, requests, rooms, presence, calls. */
export class CallboxClient extends Emitter<CallboxClientEventMap> {
  constructor(options?: ClientOptions);
  readonly options: ClientOptions & { reconnect: boolean; restore: boolean };
  /** Every endpoint the client may use, in the order it tries them. */
  readonly urls: string[];
  /** The endpoint of the current (or next) attempt. */
  readonly url: string;
  readonly state: ConnectionState;
  /** Our user id, from `welcome`. */
  readonly me: UserId | null;
  readonly sessionId: string | null;
  readonly iceServers: IceServers;
  /** `welcome.limits` (empty before the first `welcome`). */
  readonly limits: Partial<Limits>;
  readonly heartbeatMs: number;
  /** The `seq` of the last server message processed (0: none yet in this session). */
  readonly lastSeq: number;
  /** The last `seq` the server has been told was processed (`ack`, or a resume's `last_seq`). */
  readonly ackedSeq: number;
  readonly resumeToken: string | null;
  /** Calls by id. */
  readonly calls: Map<CallId, Call>;
  /** Rooms we are in. */
  readonly rooms: Map<RoomId, { members: UserId[]; callId: CallId | null }>;
  /** The last known presence of watched users. */
  readonly presence: Map<UserId, { status: UserStatus; last_seen: number | null }>;
  /** The current WebSocket (for diagnostics and tests). */
  readonly socket: WebSocket | null;

  /** Open the connection and sign in; rejects with a `CallboxError` (e.g. `auth_failed`). */
  connect(): Promise<ServerMessageMap["welcome"]>;
  /** End the session for good (`bye`): calls end, no resume. */
  close(): Promise<void>;
  /** Close the socket as a network failure would, and wait `pauseMs` before reconnecting. */
  dropConnection(pauseMs?: number): void;
  /** Send a message (numbered with `cseq` by the client); queued while reconnecting. */
  send(message: ClientMessage): void;
  /**
   * Send a message with a fresh `rid`; resolves with the server's direct reply, rejects with a
   * `CallboxError` on the `error` about it, or after `timeoutMs` (15 s).
   */
  request(message: ClientMessage, options?: { timeoutMs?: number }): Promise<ServerMessage>;
  /** Start a call: a user, several (a group call), or every other member of a room. */
  call(to: UserId | UserId[] | { room: RoomId }, options?: CallOptions): Promise<Call>;
  /** Join a room's running call, or a group call we were invited to. */
  join(callId: CallId, options?: MediaOptions): Promise<Call>;
  joinRoom(room: RoomId): Promise<ServerMessageMap["room_joined"]>;
  leaveRoom(room: RoomId): Promise<ServerMessageMap["room_left"]>;
  /** Send `data` (any JSON) to every other member of the room. */
  broadcast(room: RoomId, data: unknown): void;
  /** Watch users: a `presence` event now for each, then on every change. */
  watch(users: UserId[]): Promise<ServerMessageMap["presence"]>;
  unwatch(users: UserId[]): void;
  /** This device's availability. */
  setPresence(status: PresenceStatus): void;
}

/** How a call ended for us (`call.endReason`, the `"ended"` event). */
export interface CallEnd {
  /** `call_ended`'s reason, or a local end's: `hangup`, `rejected`, `error`, `session_lost`. */
  reason: EndReason | "session_lost";
  by?: UserId;
  detail?: HangupReason;
  error?: Error;
  /** We ended it ourselves, or it ended because of a local failure. */
  local?: boolean;
}

/** A call's events. */
export interface CallEventMap {
  state: CallState;
  /** The joined participants (us included). */
  participants: UserId[];
  /** Who the server is ringing. */
  ringing: UserId[];
  /** An invitee dropped out (group calls). */
  rejected: { by: UserId; reason: DropoutReason };
  peer: CallPeer;
  /** Media from a participant: one stable MediaStream per peer. */
  stream: { userId: UserId; stream: MediaStream; peer: CallPeer };
  peer_state: {
    userId: UserId;
    peer: CallPeer;
    iceConnectionState: RTCIceConnectionState;
    connectionState: RTCPeerConnectionState;
  };
  peer_left: { userId: UserId; reason: LeaveReason };
  /** ICE could not be restored (a call with no other connected peer then hangs up). */
  peer_failed: { userId: UserId; peer: CallPeer };
  /** The server's duration cap is near. */
  expiring: { endsInMs: number };
  /** Glare: this call now has the id of the call it was merged into. */
  merged: { from: CallId; into: CallId };
  ended: CallEnd;
}

/** One call, 1:1 or group: a mesh of `CallPeer`s, one per other joined participant. */
export class Call extends Emitter<CallEventMap> {
  /** Calls are made by the client: `client.call()`, `client.join()`, the `"incoming"` event. */
  private constructor();
  readonly client: CallboxClient;
  readonly id: CallId;
  readonly direction: "outgoing" | "incoming" | "joined";
  readonly state: CallState;
  /** The caller (null for a call we joined). */
  readonly from: UserId | null;
  readonly media: Media;
  readonly metadata: Metadata | null;
  readonly room: RoomId | null;
  readonly localStream: MediaStream | null;
  /** The joined participants, us included. */
  readonly participants: UserId[];
  /** Users being rung. */
  readonly ringing: UserId[];
  /** Those of `ringing` with no device connected, reached through the deployer's backend (a
   * push: `call_ringing.offline`); a device of theirs may still connect and answer. */
  readonly offline: UserId[];
  /** One peer per other joined participant. */
  readonly peers: Map<UserId, CallPeer>;
  /** When an incoming call stops ringing (`Date.now()` scale). */
  readonly expiresAt: number | null;
  readonly endReason: CallEnd | null;
  /** The other joined participants. */
  readonly others: UserId[];

  /** Answer an incoming call; resolves on `call_accepted`. */
  answer(options?: MediaOptions): Promise<ServerMessage>;
  /** Decline an incoming call. */
  reject(reason?: RejectReason): void;
  /** Leave the call; an incoming call is declined instead. */
  hangup(reason?: HangupReason): void;
  /** Ring more people into this call; resolves on `call_ringing`. */
  invite(users: UserId[]): Promise<ServerMessage>;
  /** Mute or unmute our audio or video (the tracks keep flowing, silent or black). */
  setMuted(kind: "audio" | "video", muted: boolean): void;
  /** Statistics of every peer. */
  stats(): Promise<PeerStats[]>;
}

/** A peer connection's statistics (`peer.stats()`). */
export interface PeerStats {
  userId: UserId;
  iceConnectionState: RTCIceConnectionState;
  connectionState: RTCPeerConnectionState;
  signalingState: RTCSignalingState;
  /** Inbound video. */
  video: {
    bytesReceived: number;
    packetsReceived: number;
    framesDecoded: number;
    frameWidth: number;
  };
  /** Inbound audio. */
  audio: { bytesReceived: number; packetsReceived: number };
  /** All outbound RTP. */
  bytesSent: number;
  /** The types of the selected candidate pair (host, srflx, relay). */
  candidates: { local: string; remote: string } | null;
  iceRestarts: number;
}

/** A peer connection's events. */
export interface CallPeerEventMap {
  /** The peer's stream (once per track added to it). */
  stream: MediaStream;
  /** ICE's or the connection's new state. */
  state: RTCIceConnectionState | RTCPeerConnectionState;
  /** ICE could not be restored after three restarts. */
  failed: undefined;
  /** An SDP or ICE operation failed. */
  error: unknown;
  closed: undefined;
}

/** One RTCPeerConnection to one remote participant, negotiated with "perfect negotiation". */
export class CallPeer extends Emitter<CallPeerEventMap> {
  /** Peers are made by their call. */
  private constructor();
  readonly call: Call;
  readonly remoteId: UserId;
  /** The lesser user id is polite: it yields when offers cross. */
  readonly polite: boolean;
  /** We make the first offer (we are the newcomer). */
  readonly offerer: boolean;
  readonly closed: boolean;
  readonly iceRestarts: number;
  /** Every track from this participant, in one stable stream. */
  readonly remoteStream: MediaStream;
  readonly pc: RTCPeerConnection;
  /** Whether media can flow (ICE connected or completed). */
  readonly connected: boolean;

  /** Handle `sdp_offer`, `sdp_answer` or `ice_candidate` from this participant. */
  handle(
    message:
      | ServerMessageMap["sdp_offer"]
      | ServerMessageMap["sdp_answer"]
      | ServerMessageMap["ice_candidate"],
  ): void;
  /** Restart ICE by hand (a new offer/answer through perfect negotiation). */
  restartIce(): void;
  close(): void;
  stats(): Promise<PeerStats>;
}
