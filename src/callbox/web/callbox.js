/**
 * callbox.js — a small, dependency-free browser client for the callbox signaling protocol (v1).
 *
 * Three classes, one per layer:
 *
 * - {@link CallboxClient}: the WebSocket session. `hello`/`welcome`, heartbeat, `rid` requests,
 *   automatic resume after a lost socket (replayed messages are processed exactly once, and what the
 *   lost socket swallowed is sent again and applied once: `cseq`), on the next of several server
 *   URLs if it has them (nodes of one cluster), rooms and presence, and an event emitter for every
 *   server message.
 * - {@link Call}: one call (1:1 or group). Ringing, answering, rejecting, inviting, joining,
 *   hanging up; it owns the local media and one {@link CallPeer} per remote participant (a mesh).
 * - {@link CallPeer}: one RTCPeerConnection to one remote participant, negotiated with the
 *   "perfect negotiation" pattern, trickling ICE, restarting ICE when connectivity fails.
 *
 * Served by the callbox server at `/callbox.js`:
 *
 * ```js
 * import { CallboxClient } from "/callbox.js";
 * const client = new CallboxClient({ userId: "alice" });
 * await client.connect();
 * client.on("incoming", (call) => call.answer());
 * const call = await client.call(["bob"]);
 * call.on("stream", ({ userId, stream }) => { video.srcObject = stream; });
 * ```
 *
 * Every field name on the wire is the protocol's (see `schemas/` in the callbox repository).
 * @module callbox
 */

/**
 * @typedef {{audio: boolean, video: boolean}} Media
 * @typedef {{urls: string[], username?: string, credential?: string}} IceServer
 * @typedef {{type: string, seq?: number, rid?: string, [field: string]: any}} Message
 *   A protocol message, as sent or received.
 * @typedef {"idle"|"connecting"|"open"|"reconnecting"|"closed"} ConnectionState
 * @typedef {"calling"|"ringing"|"incoming"|"joining"|"active"|"ended"} CallState
 *   `calling`: call_initiate sent; `ringing`: the server rings someone (call_ringing);
 *   `incoming`: we are being rung; `joining`: call_answer/call_join sent; `active`: we are a joined
 *   participant; `ended`: over (see {@link Call#endReason}).
 */

/** Close codes the server uses that mean "do not try to resume". */
const CLOSE_AUTH_FAILED = 4001;
const CLOSE_TAKEN_OVER = 4002;
const CLOSE_SESSION_TERMINATED = 4004; // the deployer removed the user's sessions: no resume
const CLOSE_POLICY = 1008;
/** Close codes by which a server says it cannot serve us now but another may: going away (a node
 * shutting down), service restart, try again later. The next URL is tried at once. */
const MOVE_ON_CLOSE_CODES = new Set([1001, 1012, 1013]);

const RECONNECT_FIRST_DELAY_MS = 250;
const RECONNECT_MAX_DELAY_MS = 5000;
/** How long one attempt (the WebSocket handshake, then `hello` to `welcome`) may take before the
 * next URL is tried: a frozen node accepts connections and answers nothing. */
const ATTEMPT_TIMEOUT_MS = 10000;
const REQUEST_TIMEOUT_MS = 15000;
/** Numbered messages kept for sending again after a resume (`cseq`): far more than a lost
 * socket can swallow between two messages the server applied. */
const UNAPPLIED_KEPT = 1024;
const ICE_DISCONNECTED_RESTART_MS = 4000;
const MAX_ICE_RESTARTS = 3;

// ---------------------------------------------------------------------------------------------
// Events

/** A minimal event emitter: `on` returns a function that removes the handler. */
export class Emitter {
  constructor() {
    /** @type {Map<string, Set<Function>>} */
    this._handlers = new Map();
  }

  /**
   * @param {string} type
   * @param {(...args: any[]) => void} handler
   * @returns {() => void} removes the handler
   */
  on(type, handler) {
    if (!this._handlers.has(type)) this._handlers.set(type, new Set());
    this._handlers.get(type).add(handler);
    return () => this.off(type, handler);
  }

  /** @param {string} type @param {Function} handler */
  off(type, handler) {
    this._handlers.get(type)?.delete(handler);
  }

  /**
   * The next `type` event, as a promise.
   * @param {string} type
   * @returns {Promise<any>}
   */
  once(type) {
    return new Promise((resolve) => {
      const off = this.on(type, (value) => {
        off();
        resolve(value);
      });
    });
  }

  /** @param {string} type @param {...any} args */
  emit(type, ...args) {
    for (const handler of [...(this._handlers.get(type) ?? [])]) {
      try {
        handler(...args);
      } catch (error) {
        console.error(`callbox: a "${type}" handler threw`, error);
      }
    }
  }
}

/** An `error` from the server (or a request that could not complete), as an exception. */
export class CallboxError extends Error {
  /**
   * @param {string} code protocol error code (`invalid_message`, `user_busy`…) or a local one
   *   (`timeout`, `session_lost`, `closed`)
   * @param {string} message
   * @param {{path?: string, rid?: string, reply?: Message}} [details]
   */
  constructor(code, message, details = {}) {
    super(`${code}: ${message}`);
    this.name = "CallboxError";
    this.code = code;
    this.path = details.path;
    this.rid = details.rid;
    this.reply = details.reply;
  }
}

/** A fresh call id: 8–64 characters of [A-Za-z0-9_-]. */
export function newCallId() {
  return "c-" + crypto.randomUUID().replaceAll("-", "");
}

/** `ws(s)://<this page's host>/ws`, the endpoint of the server that served the page. */
export function defaultUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws`;
}

// ---------------------------------------------------------------------------------------------
// The session

/**
 * @typedef {object} ClientOptions
 * @property {string | string[]} [url] WebSocket endpoint, or several (nodes of one cluster): the
 *   first connect tries them in order, and a lost connection is resumed on the next one,
 *   round-robin; default {@link defaultUrl}
 * @property {string} [userId] development mode: the user id to sign in as
 * @property {string | (() => string | Promise<string>)} [token] a JWT, or a function returning a
 *   fresh one (called on every connect, resumes included)
 * @property {string} [deviceId]
 * @property {boolean} [reconnect] resume after a lost socket (default true)
 * @property {boolean} [restore] after a session is lost, re-watch presence and rejoin rooms in the
 *   new session (default true)
 * @property {RTCConfiguration} [rtcConfiguration] merged into every RTCPeerConnection's
 *   configuration (`iceServers` comes from the server unless given here)
 * @property {(media: Media) => Promise<MediaStream>} [getUserMedia] how calls get local media
 * @property {number} [attemptTimeoutMs] how long one attempt to reach a server may take before
 *   the next URL is tried (default 10 s)
 */

/**
 * One signed-in session on a callbox server.
 *
 * Events (all with one argument):
 * - every server message by its `type` (`"presence"`, `"room_message"`, `"error"`, …), and
 *   `"message"` for all of them; replayed messages are emitted once, in order
 * - `"state"` {@link ConnectionState}: the connection changed state
 * - `"welcome"` (the welcome message) on every welcome, `"resumed"` when a resume succeeded
 * - `"session_lost"` `{reason}`: the session is gone (`not_resumed`, `grace_expired`,
 *   `auth_failed`, `taken_over`, `closed`); its calls have ended locally
 * - `"reconnecting"` `{attempt, delayMs, url}`: the next attempt, to `url`, starts in `delayMs`
 * - `"call"` {@link Call}: a call object was created (outgoing, incoming or joined)
 * - `"incoming"` {@link Call}: someone is ringing us
 */
export class CallboxClient extends Emitter {
  /** @param {ClientOptions} [options] */
  constructor(options = {}) {
    super();
    this.options = { reconnect: true, restore: true, ...options };
    this.options.attemptTimeoutMs ??= ATTEMPT_TIMEOUT_MS; // an explicit undefined too: never 0 ms
    /** Every server endpoint, in the order they are tried. @type {string[]} */
    this.urls = options.url === undefined ? [defaultUrl()] : [options.url].flat();
    if (this.urls.length === 0) throw new TypeError("callbox: url is an empty list");
    this._urlIndex = 0;
    /** @type {ConnectionState} */
    this.state = "idle";
    /** Our user id, from `welcome`. @type {string | null} */
    this.me = null;
    /** @type {string | null} */
    this.sessionId = null;
    /** @type {IceServer[]} */
    this.iceServers = [];
    /** `welcome.limits`: max_participants, reconnect_grace_ms, … @type {Record<string, number>} */
    this.limits = {};
    this.heartbeatMs = 15000;
    /** The `seq` of the last server message processed (0: none yet in this session). */
    this.lastSeq = 0;
    /** The last `seq` the server has been told was processed (`ack`, or a resume's `last_seq`). */
    this.ackedSeq = 0;
    /** @type {string | null} */
    this.resumeToken = null;
    /** Calls by id. @type {Map<string, Call>} */
    this.calls = new Map();
    /** Rooms we are in. @type {Map<string, {members: string[], callId: string | null}>} */
    this.rooms = new Map();
    /** Last known presence of watched users. @type {Map<string, {status: string, last_seen: number | null}>} */
    this.presence = new Map();

    /** @type {WebSocket | null} */
    this._ws = null;
    this._closing = false;
    this._welcomed = false;
    this._ridCounter = 0;
    /** @type {Map<string, {resolve: Function, reject: Function, timer: any}>} */
    this._pending = new Map();
    /** Messages sent while the socket is down, sent on resume. @type {Message[]} */
    this._outbox = [];
    /** The `cseq` of the last message numbered in this session (0: none yet). */
    this._cseq = 0;
    /** The last numbered messages written to a socket, oldest first: after a resume, those
     * above the welcome's `last_cseq` never reached the server and are sent again, once.
     * @type {Message[]} */
    this._unapplied = [];
    /** @type {Set<string>} */
    this._watching = new Set();
    this._reconnectAttempt = 0;
    /** URLs left since the last backoff because they said another server may serve us (1001,
     * 1012, 1013): while not all have, the next is tried at once. */
    this._turnedAway = 0;
    /** URLs the first connect has still to try before it gives up. */
    this._untried = 0;
    this._attemptTimer = null;
    this._reconnectTimer = null;
    this._graceTimer = null;
    this._heartbeatTimer = null;
    this._pingSentAt = null;
    this._pauseMs = 0;
    /** @type {Call | null} an outgoing call merged by glare, waiting for its surviving call_id */
    this._merging = null;
    this._connectWaiters = null;
    /** @type {Message | null} an error answering our hello */
    this._helloError = null;
    /** @type {string[] | null} rooms to rejoin in the next new session (after a lost one) */
    this._restoreRooms = null;
  }

  /** The current WebSocket (for diagnostics and tests). */
  get socket() {
    return this._ws;
  }

  /** The endpoint of the current connection (or of the next attempt, while reconnecting). */
  get url() {
    return this.urls[this._urlIndex];
  }

  /**
   * Open the connection and sign in. Resolves with `welcome`; rejects on `error` (e.g.
   * `auth_failed`) or if the socket closes first.
   * @returns {Promise<Message>}
   */
  connect() {
    if (this.state !== "idle" && this.state !== "closed") {
      return Promise.reject(new CallboxError("invalid_state", `already ${this.state}`));
    }
    this._closing = false;
    this._restoreRooms = null;
    this._untried = this.urls.length - 1;
    return new Promise((resolve, reject) => {
      this._connectWaiters = { resolve, reject };
      this._setState("connecting");
      this._open(false);
    });
  }

  /**
   * End the session for good (`bye`): calls end, no resume. Resolves when the socket is closed.
   * @returns {Promise<void>}
   */
  async close() {
    this._closing = true;
    clearTimeout(this._reconnectTimer);
    clearTimeout(this._attemptTimer);
    clearTimeout(this._graceTimer);
    const ws = this._ws;
    if (ws && ws.readyState === WebSocket.OPEN && this._welcomed) ws.send(JSON.stringify({ type: "bye" }));
    this._sessionLost("closed");
    if (ws && ws.readyState !== WebSocket.CLOSED) {
      const closed = new Promise((resolve) => ws.addEventListener("close", resolve, { once: true }));
      if (!this._welcomed) ws.close(1000);
      await Promise.race([closed, new Promise((resolve) => setTimeout(resolve, 2000))]);
      ws.close(1000);
    }
    this._stopHeartbeat();
    this._setState("closed");
  }

  /**
   * Testing and diagnostics: close the socket as if the network had dropped it, and wait `pauseMs`
   * before the first reconnect attempt. The session resumes as after any other loss.
   * @param {number} [pauseMs]
   */
  dropConnection(pauseMs = 0) {
    this._pauseMs = pauseMs;
    this._ws?.close(4000, "dropped by the client");
  }

  // Sending ----------------------------------------------------------------------------------

  /**
   * Send a message. While the connection is down (reconnecting) it is queued and sent once the
   * session has resumed; if the session is lost instead, it is dropped.
   * @param {Message} message
   */
  send(message) {
    if (this.state === "open" && this._ws?.readyState === WebSocket.OPEN) {
      if (message.type === "ping" || message.type === "hello") {
        this._ws.send(JSON.stringify(message)); // they belong to the connection: no cseq
        return;
      }
      const numbered = { ...message, cseq: ++this._cseq };
      this._unapplied.push(numbered);
      if (this._unapplied.length > UNAPPLIED_KEPT) this._unapplied.shift();
      this._ws.send(JSON.stringify(numbered));
    } else if (this.state === "closed" || this.state === "idle") {
      throw new CallboxError("closed", `not connected: cannot send ${message.type}`);
    } else {
      this._outbox.push(message);
    }
  }

  /**
   * Send a message with a fresh `rid`; resolves with the server's direct reply to it (the first
   * message echoing the rid: `call_ringing`, `room_joined`, `call_accepted`, `pong`…), rejects with
   * a {@link CallboxError} on the `error` about it, or after `timeoutMs`.
   * Only use it for messages that get a direct reply; `send` the others.
   * @param {Message} message
   * @param {{timeoutMs?: number}} [options]
   * @returns {Promise<Message>}
   */
  request(message, { timeoutMs = REQUEST_TIMEOUT_MS } = {}) {
    const rid = `r${++this._ridCounter}`;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(rid);
        reject(new CallboxError("timeout", `no reply to ${message.type} within ${timeoutMs} ms`, { rid }));
      }, timeoutMs);
      this._pending.set(rid, { resolve, reject, timer });
      try {
        this.send({ ...message, rid });
      } catch (error) {
        clearTimeout(timer);
        this._pending.delete(rid);
        reject(error);
      }
    });
  }

  // Calls ------------------------------------------------------------------------------------

  /**
   * Start a call: `to` is a user id, a list of user ids (a group call), or `{room}` (ring every
   * other member of that room). Gets local media first (unless `stream` is given), then sends
   * `call_initiate`. Resolves with the {@link Call} once the server answered (`call_ringing`, or a
   * refusal, which ends the call); rejects on `error` (the call is then ended locally).
   * @param {string | string[] | {room: string}} to
   * @param {{media?: Media, metadata?: Record<string, any>, stream?: MediaStream, callId?: string}} [options]
   * @returns {Promise<Call>}
   */
  async call(to, { media = { audio: true, video: true }, metadata, stream, callId } = {}) {
    const target = typeof to === "string" ? { to: [to] } : Array.isArray(to) ? { to } : { room: to.room };
    const localStream = stream ?? (await this._getUserMedia(media));
    const call = new Call(this, {
      id: callId ?? newCallId(),
      direction: "outgoing",
      state: "calling",
      from: this.me,
      media,
      metadata: metadata ?? null,
      room: target.room ?? null,
      localStream,
      ownsStream: !stream,
    });
    call.participants = [this.me];
    this._addCall(call);
    const initiate = { type: "call_initiate", call_id: call.id, ...target, media };
    if (metadata) initiate.metadata = metadata;
    try {
      await this.request(initiate);
    } catch (error) {
      call._end({ reason: "error", error });
      throw error;
    }
    return call;
  }

  /**
   * Join a call we may join without being rung: a room's running call (any member), or a group
   * call we were invited to. Gets local media, sends `call_join`, resolves with the {@link Call} on
   * `call_accepted`; we then offer to everyone already in.
   * @param {string} callId
   * @param {{media?: Media, stream?: MediaStream}} [options]
   * @returns {Promise<Call>}
   */
  async join(callId, { media = { audio: true, video: true }, stream } = {}) {
    let call = this.calls.get(callId);
    if (call && call.state !== "incoming") throw new CallboxError("invalid_state", `already in call ${callId}`);
    if (call) {
      await call.answer({ media, stream }); // still ringing: answering is joining
      return call;
    }
    const localStream = stream ?? (await this._getUserMedia(media));
    call = new Call(this, {
      id: callId,
      direction: "joined",
      state: "joining",
      from: null,
      media,
      localStream,
      ownsStream: !stream,
    });
    this._addCall(call);
    try {
      await this.request({ type: "call_join", call_id: callId });
    } catch (error) {
      call._end({ reason: "error", error });
      throw error;
    }
    return call;
  }

  // Rooms --------------------------------------------------------------------------------------

  /**
   * Join a room; resolves with `room_joined` (`members`, and `call_id` of the room's running call).
   * @param {string} room
   */
  joinRoom(room) {
    return this.request({ type: "room_join", room });
  }

  /** @param {string} room @returns {Promise<Message>} `room_left` */
  leaveRoom(room) {
    return this.request({ type: "room_leave", room });
  }

  /**
   * Send `data` (any JSON) to every other member: they get `room_message {room, from, data}`.
   * @param {string} room
   * @param {any} data
   */
  broadcast(room, data) {
    this.send({ type: "room_broadcast", room, data });
  }

  // Presence -----------------------------------------------------------------------------------

  /**
   * Watch users: a `presence` event now for each (their current state), then on every change.
   * Resolves with the first `presence` reply.
   * @param {string[]} users
   */
  watch(users) {
    for (const user of users) this._watching.add(user);
    return this.request({ type: "presence_subscribe", users });
  }

  /** @param {string[]} users */
  unwatch(users) {
    for (const user of users) {
      this._watching.delete(user);
      this.presence.delete(user);
    }
    this.send({ type: "presence_unsubscribe", users });
  }

  /** @param {"online" | "away" | "dnd"} status this device's availability */
  setPresence(status) {
    this.send({ type: "presence_set", status });
  }

  // Internals: the socket --------------------------------------------------------------------

  /** @param {ConnectionState} state */
  _setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.emit("state", state);
  }

  async _hello(resume) {
    /** @type {Message} */
    const hello = { type: "hello" };
    const { token, userId, deviceId } = this.options;
    if (token !== undefined) hello.token = typeof token === "function" ? await token() : token;
    else if (userId !== undefined) hello.user_id = userId;
    if (deviceId !== undefined) hello.device_id = deviceId;
    if (resume && this.resumeToken) {
      hello.resume = this.resumeToken;
      hello.last_seq = this.lastSeq;
    }
    return hello;
  }

  /** @param {boolean} resume */
  _open(resume) {
    const ws = new WebSocket(this.url);
    this._ws = ws;
    this._welcomed = false;
    this._helloError = null;
    let opened = false;
    clearTimeout(this._attemptTimer);
    this._attemptTimer = setTimeout(() => {
      if (this._ws === ws && !this._welcomed) this._abandon(ws, "no welcome in time");
    }, this.options.attemptTimeoutMs);
    ws.onerror = () => {
      if (this._ws === ws && !opened) this._abandon(ws, "could not connect");
    };
    ws.onopen = async () => {
      opened = true;
      const hello = await this._hello(resume);
      if (this._ws === ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(hello));
    };
    ws.onmessage = (event) => {
      if (this._ws === ws) this._onFrame(event.data);
    };
    ws.onclose = (event) => {
      if (this._ws === ws) this._onSocketClosed(event);
    };
  }

  /**
   * Gives up a socket that could not connect, or did not bring a welcome in time, without
   * waiting for its close event: a frozen server never finishes a closing handshake, and node
   * 20's WebSocket fires only `error` when it cannot connect. In a browser the close event
   * follows the error; it is ignored.
   * @param {WebSocket} ws
   * @param {string} reason
   */
  _abandon(ws, reason) {
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    try {
      ws.close(4000, reason);
    } catch {
      // closed already
    }
    this._onSocketClosed({ code: 1006, reason });
  }

  /** @param {{code: number, reason: string}} event the socket's CloseEvent, or one like it */
  _onSocketClosed(event) {
    this._stopHeartbeat();
    clearTimeout(this._attemptTimer);
    this._ws = null;
    const wasWelcomed = this._welcomed;
    this._welcomed = false;
    if (this._closing) return;
    const fatal = {
      [CLOSE_AUTH_FAILED]: "auth_failed",
      [CLOSE_TAKEN_OVER]: "taken_over",
      [CLOSE_POLICY]: "refused",
      [CLOSE_SESSION_TERMINATED]: "terminated",
    }[event.code];
    if (this._connectWaiters && !wasWelcomed && !this.resumeToken) {
      // The very first connect failed: the next URL is tried at once, each once; then it is
      // reported to connect()'s caller instead of retrying.
      const refusal = this._helloError; // e.g. auth_failed, with the server's explanation
      if (!refusal && !fatal && this._untried > 0) {
        this._untried--; // a refusal of our hello is not tried elsewhere: all would refuse it
        this._urlIndex = (this._urlIndex + 1) % this.urls.length;
        this._open(false);
        return;
      }
      const error = refusal
        ? new CallboxError(refusal.code, refusal.message, { path: refusal.path, reply: refusal })
        : new CallboxError(fatal ?? "closed", event.reason || `socket closed (${event.code}) before welcome`);
      this._connectWaiters.reject(error);
      this._connectWaiters = null;
      this._setState("closed");
      return;
    }
    if (fatal) {
      this._sessionLost(fatal);
      this._setState("closed");
      return;
    }
    if (!this.options.reconnect) {
      this._sessionLost("closed");
      this._setState("closed");
      return;
    }
    if (wasWelcomed && this.resumeToken) {
      // The session lives on in the server for reconnect_grace_ms: resume before that.
      const grace = this.limits.reconnect_grace_ms ?? 10000;
      clearTimeout(this._graceTimer);
      this._graceTimer = setTimeout(() => {
        this.resumeToken = null;
        this._sessionLost("grace_expired");
      }, grace);
    }
    // Round-robin: whatever ended this connection, the next attempt is to the next URL.
    this._urlIndex = (this._urlIndex + 1) % this.urls.length;
    this._scheduleReconnect(MOVE_ON_CLOSE_CODES.has(event.code));
  }

  /**
   * Opens the next connection after the backoff; at once if the server we lost said another may
   * serve us (`turnedAway`), unless every URL has said so since the last backoff.
   * @param {boolean} turnedAway
   */
  _scheduleReconnect(turnedAway) {
    this._setState("reconnecting");
    this._turnedAway = turnedAway ? this._turnedAway + 1 : 0;
    const atOnce = this._turnedAway > 0 && this._turnedAway < this.urls.length;
    if (!atOnce) this._turnedAway = 0;
    const attempt = this._reconnectAttempt++;
    const backoff = Math.min(RECONNECT_MAX_DELAY_MS, RECONNECT_FIRST_DELAY_MS * 2 ** attempt);
    const delay = this._pauseMs || (atOnce ? 0 : backoff * (0.5 + Math.random() / 2));
    this._pauseMs = 0;
    this.emit("reconnecting", { attempt: attempt + 1, delayMs: Math.round(delay), url: this.url });
    clearTimeout(this._reconnectTimer);
    this._reconnectTimer = setTimeout(() => this._open(this.resumeToken !== null), delay);
  }

  /** @param {string} data */
  _onFrame(data) {
    /** @type {Message} */
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      console.warn("callbox: a frame that is not JSON", data);
      return;
    }
    if (this._pingSentAt !== null && message.type === "pong") this._pingSentAt = null;
    if (typeof message.seq === "number") {
      if (message.seq <= this.lastSeq) return; // already processed before a resume
      if (message.seq !== this.lastSeq + 1) {
        console.warn(`callbox: seq jumped from ${this.lastSeq} to ${message.seq}`);
      }
    }
    try {
      this._dispatch(message);
    } finally {
      if (typeof message.seq === "number") {
        this.lastSeq = message.seq;
        this._acknowledge();
      }
    }
  }

  /** Tells the server what has been processed (`ack`) each time a quarter of its replay history
   * has come in since the last time, so that it holds only what a resume may still need. */
  _acknowledge() {
    const held = this.limits.replay_buffer_messages;
    if (!held || this.lastSeq - this.ackedSeq < Math.max(1, Math.floor(held / 4))) return;
    if (this._ws?.readyState !== WebSocket.OPEN) return;
    this._ws.send(JSON.stringify({ type: "ack", last_seq: this.lastSeq }));
    this.ackedSeq = this.lastSeq;
  }

  /** @param {Message} message */
  _dispatch(message) {
    switch (message.type) {
      case "welcome":
        this._onWelcome(message);
        break;
      case "ice_servers":
        this.iceServers = message.ice_servers;
        for (const call of this.calls.values()) call._updateIceServers();
        break;
      case "call_incoming":
      case "call_ringing":
      case "call_accepted":
      case "call_rejected":
      case "call_expiring":
      case "call_ended":
      case "participant_joined":
      case "participant_left":
      case "sdp_offer":
      case "sdp_answer":
      case "ice_candidate":
        this._routeCall(message);
        break;
      case "room_joined":
        this.rooms.set(message.room, { members: message.members, callId: message.call_id ?? null });
        break;
      case "room_left":
        this.rooms.delete(message.room);
        break;
      case "room_member_joined": {
        const room = this.rooms.get(message.room);
        if (room && !room.members.includes(message.user_id)) room.members.push(message.user_id);
        break;
      }
      case "room_member_left": {
        const room = this.rooms.get(message.room);
        if (room) room.members = room.members.filter((user) => user !== message.user_id);
        break;
      }
      case "presence":
        this.presence.set(message.user_id, { status: message.status, last_seen: message.last_seen });
        break;
      case "error":
        if (!this._welcomed) this._helloError = message;
        break;
    }
    this._settle(message);
    this.emit(message.type, message);
    this.emit("message", message);
  }

  /** Resolve or reject the request whose `rid` this message echoes. @param {Message} message */
  _settle(message) {
    const pending = message.rid === undefined ? undefined : this._pending.get(message.rid);
    if (!pending) return;
    this._pending.delete(message.rid);
    clearTimeout(pending.timer);
    if (message.type === "error") {
      pending.reject(new CallboxError(message.code, message.message, { path: message.path, rid: message.rid, reply: message }));
    } else {
      pending.resolve(message);
    }
  }

  /** @param {Message} welcome */
  _onWelcome(welcome) {
    const hadSession = this.sessionId !== null;
    if (!welcome.resumed && hadSession) this._sessionLost("not_resumed");
    this._welcomed = true;
    this._reconnectAttempt = 0;
    this._turnedAway = 0;
    clearTimeout(this._attemptTimer);
    clearTimeout(this._graceTimer);
    this.me = welcome.user_id;
    this.iceServers = welcome.ice_servers;
    this.limits = welcome.limits;
    this.heartbeatMs = welcome.heartbeat_ms;
    this.resumeToken = welcome.resume_token;
    if (!welcome.resumed) this.lastSeq = 0;
    this.ackedSeq = this.lastSeq; // counted from here: a resume's last_seq told the server as much
    this.sessionId = welcome.session_id;
    if (welcome.resumed) {
      // What the lost socket swallowed: numbered, written, never applied. Sent again first, in
      // order and with the same cseq, so the server applies each exactly once: before the state
      // says "open", whose handlers may send (a later cseq applied first would make the server
      // take these for repeats).
      this._unapplied = this._unapplied.filter((m) => m.cseq > (welcome.last_cseq ?? 0));
      for (const message of this._unapplied) this._ws?.send(JSON.stringify(message));
    } else {
      this._cseq = 0;
      this._unapplied = [];
    }
    this._setState("open");
    this._startHeartbeat();
    if (this._connectWaiters) {
      this._connectWaiters.resolve(welcome);
      this._connectWaiters = null;
    }
    const outbox = this._outbox.splice(0);
    for (const message of outbox) this.send(message);
    this.emit(welcome.resumed ? "resumed" : "session", welcome);
    if (!welcome.resumed && this._restoreRooms && this.options.restore) this._restore();
    for (const call of this.calls.values()) call._updateIceServers();
  }

  /**
   * The session is gone: its calls, rooms and pending requests with it.
   * @param {string} reason
   */
  _sessionLost(reason) {
    if (this.sessionId === null) return;
    const rooms = [...this.rooms.keys()];
    this.sessionId = null;
    this._restoreRooms = reason === "closed" ? null : rooms;
    this._outbox = [];
    for (const [rid, pending] of this._pending) {
      clearTimeout(pending.timer);
      pending.reject(new CallboxError("session_lost", `the session was lost (${reason})`, { rid }));
    }
    this._pending.clear();
    for (const call of [...this.calls.values()]) call._end({ reason: "session_lost", local: true });
    this.rooms.clear();
    this.emit("session_lost", { reason });
  }

  /** A new session after a lost one: watch the same users and rejoin the same rooms. */
  _restore() {
    if (this._watching.size > 0) this.watch([...this._watching]).catch(() => {});
    for (const room of this._restoreRooms ?? []) this.joinRoom(room).catch(() => {});
    this._restoreRooms = null;
  }

  // Heartbeat: an application ping every heartbeat_ms; no pong by the next tick means the socket
  // is dead even if the browser has not noticed (e.g. a laptop that slept), so close and resume.
  _startHeartbeat() {
    this._stopHeartbeat();
    this._heartbeatTimer = setInterval(() => {
      const ws = this._ws;
      if (!ws || ws.readyState !== WebSocket.OPEN) return;
      if (this._pingSentAt !== null) {
        console.warn("callbox: no pong within a heartbeat; reconnecting");
        ws.close(4000, "heartbeat timeout");
        return;
      }
      this._pingSentAt = Date.now();
      ws.send(JSON.stringify({ type: "ping", ts: this._pingSentAt }));
    }, this.heartbeatMs);
  }

  _stopHeartbeat() {
    clearInterval(this._heartbeatTimer);
    this._heartbeatTimer = null;
    this._pingSentAt = null;
  }

  // Internals: calls -------------------------------------------------------------------------

  /** @param {Media} media */
  _getUserMedia(media) {
    if (this.options.getUserMedia) return this.options.getUserMedia(media);
    if (!media.audio && !media.video) return Promise.resolve(new MediaStream());
    return navigator.mediaDevices.getUserMedia({ audio: media.audio, video: media.video });
  }

  /** @param {Call} call */
  _addCall(call) {
    this.calls.set(call.id, call);
    this.emit("call", call);
  }

  /** @param {Message} message */
  _routeCall(message) {
    let call = this.calls.get(message.call_id);
    if (message.type === "call_incoming" && !call) {
      call = new Call(this, {
        id: message.call_id,
        direction: "incoming",
        state: "incoming",
        from: message.from,
        media: message.media,
        metadata: message.metadata ?? null,
      });
      call.participants = message.participants;
      call.expiresAt = Date.now() + message.expires_in_ms;
      this._addCall(call);
      this.emit("incoming", call);
      return;
    }
    const mergeTarget = !call || call.state === "incoming";
    if (message.type === "call_accepted" && message.by === this.me && this._merging && mergeTarget) {
      // Glare: our outgoing call was merged into this one; carry on with the same Call object.
      call = this._adoptMerged(message.call_id);
    }
    if (message.type === "call_ended" && message.reason === "merged" && call && call.direction === "outgoing") {
      // Our call_initiate crossed theirs; `call_accepted` for the surviving call follows.
      this._merging = call;
      this.calls.delete(call.id);
      setTimeout(() => {
        if (this._merging === call) {
          this._merging = null;
          call._end({ reason: "merged", by: message.by });
        }
      }, 5000);
      return;
    }
    call?._onMessage(message);
  }

  /** @param {string} callId the call that survived the glare */
  _adoptMerged(callId) {
    const call = /** @type {Call} */ (this._merging);
    this._merging = null;
    const ringing = this.calls.get(callId);
    if (ringing && ringing !== call) ringing._end({ reason: "merged", local: true });
    const from = call.id;
    call.id = callId;
    this.calls.set(callId, call);
    call.emit("merged", { from, into: callId });
    return call;
  }
}

// ---------------------------------------------------------------------------------------------
// A call

/**
 * One call, 1:1 or group: a mesh of {@link CallPeer}s, one per other joined participant.
 *
 * Events:
 * - `"state"` {@link CallState}
 * - `"participants"` (string[]): the joined participants changed (us included)
 * - `"ringing"` (string[]): who the server is ringing
 * - `"rejected"` `{by, reason}`: an invitee dropped out (group calls)
 * - `"peer"` {@link CallPeer}: a peer connection was created
 * - `"stream"` `{userId, stream, peer}`: media from a participant (a stable MediaStream per peer)
 * - `"peer_state"` `{userId, peer, iceConnectionState, connectionState}`
 * - `"peer_left"` `{userId, reason}`
 * - `"peer_failed"` `{userId, peer}`: ICE could not be restored (a 1:1 call then hangs up
 *   with `ice_failed`)
 * - `"expiring"` `{endsInMs}`: the server's duration cap is near
 * - `"merged"` `{from, into}`: glare; this call now has the id of the call it was merged into
 * - `"ended"` `{reason, by?, detail?, error?, local?}`
 */
export class Call extends Emitter {
  /**
   * @param {CallboxClient} client
   * @param {object} init
   * @param {string} init.id
   * @param {"outgoing"|"incoming"|"joined"} init.direction
   * @param {CallState} init.state
   * @param {string | null} init.from the caller
   * @param {Media} init.media
   * @param {Record<string, any> | null} [init.metadata]
   * @param {string | null} [init.room]
   * @param {MediaStream | null} [init.localStream]
   * @param {boolean} [init.ownsStream] stop the local tracks when the call ends
   */
  constructor(client, init) {
    super();
    this.client = client;
    this.id = init.id;
    this.direction = init.direction;
    /** @type {CallState} */
    this.state = init.state;
    this.from = init.from;
    this.media = init.media;
    this.metadata = init.metadata ?? null;
    this.room = init.room ?? null;
    this.localStream = init.localStream ?? null;
    this._ownsStream = init.ownsStream ?? false;
    /** Joined participants, us included. @type {string[]} */
    this.participants = [];
    /** Users being rung. @type {string[]} */
    this.ringing = [];
    /** Those of `ringing` with no device connected, reached through the deployer's backend (a
     * push: `call_ringing.offline`); a device of theirs may still connect and answer. @type {string[]} */
    this.offline = [];
    /** One peer per other joined participant. @type {Map<string, CallPeer>} */
    this.peers = new Map();
    /** @type {number | null} when an incoming call stops ringing (Date.now() scale) */
    this.expiresAt = null;
    /** @type {{reason: string, by?: string, detail?: string, error?: Error, local?: boolean} | null} */
    this.endReason = null;
  }

  /** The other joined participants. */
  get others() {
    return this.participants.filter((user) => user !== this.client.me);
  }

  /**
   * Answer an incoming call (`call_answer`): gets local media, resolves on `call_accepted`. We
   * are then the newcomer, and offer to everyone already in.
   * @param {{media?: Media, stream?: MediaStream}} [options]
   */
  async answer({ media = this.media, stream } = {}) {
    if (this.state !== "incoming") throw new CallboxError("invalid_state", `cannot answer a call that is ${this.state}`);
    this.media = media;
    this._setState("joining");
    try {
      this.localStream = stream ?? (await this.client._getUserMedia(media));
      this._ownsStream = !stream;
    } catch (error) {
      // No media: decline rather than join a call we cannot take part in.
      this.client.send({ type: "call_reject", call_id: this.id, reason: "declined" });
      this._end({ reason: "error", error, local: true });
      throw error;
    }
    if (this.state !== "joining") throw new CallboxError("invalid_state", `the call ended while getting media (${this.endReason?.reason})`);
    try {
      return await this.client.request({ type: "call_answer", call_id: this.id, media });
    } catch (error) {
      this._end({ reason: "error", error, local: true });
      throw error;
    }
  }

  /** Decline an incoming call. @param {"declined" | "busy"} [reason] */
  reject(reason = "declined") {
    if (this.state !== "incoming") return;
    this.client.send({ type: "call_reject", call_id: this.id, reason });
    this._end({ reason: "rejected", by: this.client.me ?? undefined, local: true });
  }

  /**
   * Leave the call (`hangup`; a 1:1 call then ends for both). Closes the peer connections and
   * stops the local media at once. An incoming call is declined instead.
   * @param {"normal" | "ice_failed" | "media_failed" | "error"} [reason]
   */
  hangup(reason = "normal") {
    if (this.state === "ended") return;
    if (this.state === "incoming") return this.reject("declined");
    try {
      this.client.send({ type: "hangup", call_id: this.id, reason });
    } catch {
      // not connected: the server ends our part when the session ends
    }
    this._end({ reason: "hangup", by: this.client.me ?? undefined, detail: reason, local: true });
  }

  /**
   * Ring more people into this call (group calls). Resolves on `call_ringing`.
   * @param {string[]} users
   */
  invite(users) {
    return this.client.request({ type: "call_invite", call_id: this.id, to: users });
  }

  /**
   * Mute or unmute our audio or video (the tracks keep flowing, silent or black).
   * @param {"audio" | "video"} kind
   * @param {boolean} muted
   */
  setMuted(kind, muted) {
    for (const track of this.localStream?.getTracks() ?? []) {
      if (track.kind === kind) track.enabled = !muted;
    }
  }

  /** Statistics of every peer. @returns {Promise<PeerStats[]>} */
  stats() {
    return Promise.all([...this.peers.values()].map((peer) => peer.stats()));
  }

  /** @param {CallState} state */
  _setState(state) {
    if (this.state === state || this.state === "ended") return;
    this.state = state;
    this.emit("state", state);
  }

  /** @param {string[]} participants */
  _setParticipants(participants) {
    this.participants = [...participants];
    this.ringing = this.ringing.filter((user) => !participants.includes(user));
    this.offline = this.offline.filter((user) => !participants.includes(user));
    this.emit("participants", this.participants);
  }

  /**
   * The peer for `userId`, created if needed. `offerer`: we make the first offer (we are the
   * newcomer); otherwise we wait for theirs.
   * @param {string} userId
   * @param {boolean} offerer
   */
  _peer(userId, offerer) {
    let peer = this.peers.get(userId);
    if (!peer) {
      peer = new CallPeer(this, userId, { offerer });
      this.peers.set(userId, peer);
      peer.on("stream", (stream) => this.emit("stream", { userId, stream, peer }));
      peer.on("state", () =>
        this.emit("peer_state", {
          userId,
          peer,
          iceConnectionState: peer.pc.iceConnectionState,
          connectionState: peer.pc.connectionState,
        }),
      );
      peer.on("failed", () => {
        this.emit("peer_failed", { userId, peer });
        const anyConnected = [...this.peers.values()].some((other) => other !== peer && other.connected);
        if (!anyConnected) this.hangup("ice_failed");
      });
      this.emit("peer", peer);
    }
    return peer;
  }

  /** @param {string} userId @param {string} reason */
  _dropPeer(userId, reason) {
    const peer = this.peers.get(userId);
    if (peer) {
      peer.close();
      this.peers.delete(userId);
    }
    this.emit("peer_left", { userId, reason });
  }

  /** @param {Message} m */
  _onMessage(m) {
    if (this.state === "ended") return;
    const me = this.client.me;
    switch (m.type) {
      case "call_ringing":
        this.ringing = [...new Set([...this.ringing, ...m.to])];
        this.offline = [...new Set([...this.offline, ...(m.offline ?? [])])];
        this.emit("ringing", this.ringing);
        if (this.state === "calling") this._setState("ringing");
        break;
      case "call_accepted":
        this._setParticipants(m.participants);
        this._setState("active");
        if (m.by === me) {
          // We are the newcomer: we offer to everyone already in.
          for (const user of this.others) this._peer(user, true);
        } else {
          this._peer(m.by, false); // they will offer to us
        }
        break;
      case "participant_joined":
        if (!this.participants.includes(m.user_id)) this._setParticipants([...this.participants, m.user_id]);
        if (m.user_id !== me) this._peer(m.user_id, false);
        break;
      case "participant_left":
        this._setParticipants(this.participants.filter((user) => user !== m.user_id));
        this._dropPeer(m.user_id, m.reason);
        break;
      case "call_rejected":
        this.ringing = this.ringing.filter((user) => user !== m.by);
        this.offline = this.offline.filter((user) => user !== m.by);
        this.emit("rejected", { by: m.by, reason: m.reason });
        break;
      case "call_expiring":
        this.emit("expiring", { endsInMs: m.ends_in_ms });
        break;
      case "call_ended":
        this._end({ reason: m.reason, by: m.by, detail: m.detail });
        break;
      case "sdp_offer":
      case "sdp_answer":
      case "ice_candidate":
        this._peer(m.from, false).handle(m);
        break;
    }
  }

  _updateIceServers() {
    for (const peer of this.peers.values()) peer._updateIceServers();
  }

  /** The call is over for us: close every peer, stop our media, forget the call. */
  _end(reason) {
    if (this.state === "ended") return;
    for (const peer of this.peers.values()) peer.close();
    this.peers.clear();
    if (this._ownsStream) for (const track of this.localStream?.getTracks() ?? []) track.stop();
    this.endReason = reason;
    if (this.client.calls.get(this.id) === this) this.client.calls.delete(this.id);
    this.state = "ended";
    this.emit("state", "ended");
    this.emit("ended", reason);
  }
}

// ---------------------------------------------------------------------------------------------
// One peer connection

/**
 * @typedef {object} PeerStats
 * @property {string} userId
 * @property {string} iceConnectionState
 * @property {string} connectionState
 * @property {string} signalingState
 * @property {{bytesReceived: number, packetsReceived: number, framesDecoded: number, frameWidth: number}} video inbound
 * @property {{bytesReceived: number, packetsReceived: number}} audio inbound
 * @property {number} bytesSent all outbound RTP
 * @property {{local: string, remote: string} | null} candidates types of the selected pair (host, srflx, relay)
 * @property {number} iceRestarts
 */

/**
 * An RTCPeerConnection to one remote participant, negotiated with "perfect negotiation"
 * (https://w3c.github.io/webrtc-pc/#perfect-negotiation-example):
 *
 * - either side may start a negotiation (the first offer, an ICE restart, a new track) through
 *   `negotiationneeded`; if offers cross, the *impolite* peer ignores the other's offer and the
 *   *polite* one rolls its own back and answers. Politeness is fixed by comparing user ids, so the
 *   two sides always disagree: the lesser id is polite.
 * - the protocol says the newcomer makes the first offer, so the other side ("not offerer") adds its
 *   tracks only once that offer is applied, and makes no offer before then: first offers never cross.
 *
 * Events: `"stream"` (MediaStream, once per track), `"state"`, `"failed"` (ICE could not be
 * restored after {@link MAX_ICE_RESTARTS} restarts), `"error"` (an SDP or ICE operation failed),
 * `"closed"`.
 */
export class CallPeer extends Emitter {
  /**
   * @param {Call} call
   * @param {string} remoteId
   * @param {{offerer: boolean}} options
   */
  constructor(call, remoteId, { offerer }) {
    super();
    this.call = call;
    this.remoteId = remoteId;
    this.polite = /** @type {string} */ (call.client.me) < remoteId;
    this.offerer = offerer;
    this.closed = false;
    this.iceRestarts = 0;
    /** Every track from this participant, in one stable stream. */
    this.remoteStream = new MediaStream();

    this._makingOffer = false;
    this._ignoreOffer = false;
    this._settingRemoteAnswer = false;
    this._mayOffer = offerer;
    this._tracksAdded = false;
    /** @type {(RTCIceCandidateInit | null)[]} candidates that arrived before any remote description */
    this._earlyCandidates = [];
    /** Signaling messages are handled one at a time, in order. */
    this._queue = Promise.resolve();
    this._disconnectedTimer = null;

    const client = call.client;
    this.pc = new RTCPeerConnection({ iceServers: client.iceServers, ...client.options.rtcConfiguration });
    const pc = this.pc;
    pc.onnegotiationneeded = () => this._negotiate();
    pc.onicecandidate = ({ candidate }) => {
      // Trickle every candidate as the browser finds it; null means end-of-candidates.
      this._signal("ice_candidate", { candidate: candidate ? candidate.toJSON() : null });
    };
    pc.ontrack = ({ track }) => {
      if (!this.remoteStream.getTracks().includes(track)) this.remoteStream.addTrack(track);
      this.emit("stream", this.remoteStream);
    };
    pc.oniceconnectionstatechange = () => this._onIceState();
    pc.onconnectionstatechange = () => this.emit("state", pc.connectionState);
    if (offerer) this._addLocalTracks(); // fires negotiationneeded: our offer
  }

  /** Whether media can flow (ICE connected or completed). */
  get connected() {
    return this.pc.iceConnectionState === "connected" || this.pc.iceConnectionState === "completed";
  }

  /**
   * Handle `sdp_offer`, `sdp_answer` or `ice_candidate` from this participant.
   * @param {Message} message
   */
  handle(message) {
    this._queue = this._queue
      .then(() => this._handle(message))
      .catch((error) => {
        console.warn(`callbox: ${message.type} from ${this.remoteId} failed`, error);
        this.emit("error", error);
      });
  }

  /** Restart ICE (new credentials, new candidates): a new offer/answer through perfect negotiation. */
  restartIce() {
    if (this.closed) return;
    if (this.iceRestarts >= MAX_ICE_RESTARTS) {
      this.emit("failed");
      return;
    }
    this.iceRestarts++;
    this.pc.restartIce();
  }

  /** Close the connection (the call is over for this participant). */
  close() {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this._disconnectedTimer);
    this.pc.close();
    this.emit("closed");
  }

  /** @returns {Promise<PeerStats>} */
  async stats() {
    const pc = this.pc;
    /** @type {PeerStats} */
    const out = {
      userId: this.remoteId,
      iceConnectionState: pc.iceConnectionState,
      connectionState: pc.connectionState,
      signalingState: pc.signalingState,
      video: { bytesReceived: 0, packetsReceived: 0, framesDecoded: 0, frameWidth: 0 },
      audio: { bytesReceived: 0, packetsReceived: 0 },
      bytesSent: 0,
      candidates: null,
      iceRestarts: this.iceRestarts,
    };
    if (this.closed) return out;
    const report = await pc.getStats();
    let pairId = null;
    report.forEach((s) => {
      if (s.type === "inbound-rtp" && (s.kind === "video" || s.kind === "audio")) {
        const into = out[s.kind];
        into.bytesReceived += s.bytesReceived ?? 0;
        into.packetsReceived += s.packetsReceived ?? 0;
        if (s.kind === "video") {
          out.video.framesDecoded += s.framesDecoded ?? 0;
          out.video.frameWidth = Math.max(out.video.frameWidth, s.frameWidth ?? 0);
        }
      } else if (s.type === "outbound-rtp") {
        out.bytesSent += s.bytesSent ?? 0;
      } else if (s.type === "transport" && s.selectedCandidatePairId) {
        pairId = s.selectedCandidatePairId;
      }
    });
    const pair = pairId && report.get(pairId);
    if (pair) {
      out.candidates = {
        local: report.get(pair.localCandidateId)?.candidateType ?? "?",
        remote: report.get(pair.remoteCandidateId)?.candidateType ?? "?",
      };
    }
    return out;
  }

  _addLocalTracks() {
    if (this._tracksAdded) return;
    this._tracksAdded = true;
    const stream = this.call.localStream;
    for (const track of stream?.getTracks() ?? []) this.pc.addTrack(track, stream);
  }

  /** @param {string} type @param {Record<string, any>} fields */
  _signal(type, fields) {
    if (this.closed) return;
    try {
      this.call.client.send({ type, call_id: this.call.id, to: this.remoteId, ...fields });
    } catch (error) {
      console.warn(`callbox: could not send ${type}`, error);
    }
  }

  async _negotiate() {
    if (!this._mayOffer || this.closed) return;
    try {
      this._makingOffer = true;
      await this.pc.setLocalDescription();
      const { type, sdp } = /** @type {RTCSessionDescription} */ (this.pc.localDescription);
      this._signal(type === "offer" ? "sdp_offer" : "sdp_answer", { sdp });
    } catch (error) {
      console.warn(`callbox: negotiation with ${this.remoteId} failed`, error);
      this.emit("error", error);
    } finally {
      this._makingOffer = false;
    }
  }

  /** @param {Message} message */
  async _handle(message) {
    if (this.closed) return;
    const pc = this.pc;
    if (message.type === "ice_candidate") {
      if (!pc.remoteDescription) {
        this._earlyCandidates.push(message.candidate);
        return;
      }
      await this._addCandidate(message.candidate);
      return;
    }
    const description = { type: message.type === "sdp_offer" ? "offer" : "answer", sdp: message.sdp };
    const readyForOffer = !this._makingOffer && (pc.signalingState === "stable" || this._settingRemoteAnswer);
    const offerCollision = description.type === "offer" && !readyForOffer;
    this._ignoreOffer = !this.polite && offerCollision;
    if (this._ignoreOffer) return; // impolite: our offer wins, theirs is dropped
    this._settingRemoteAnswer = description.type === "answer";
    await pc.setRemoteDescription(/** @type {RTCSessionDescriptionInit} */ (description)); // rolls back ours if needed
    this._settingRemoteAnswer = false;
    for (const candidate of this._earlyCandidates.splice(0)) await this._addCandidate(candidate);
    if (description.type === "offer") {
      this._mayOffer = true;
      this._addLocalTracks(); // reuses the offered transceivers: sendrecv in our answer
      await pc.setLocalDescription();
      this._signal("sdp_answer", { sdp: /** @type {RTCSessionDescription} */ (pc.localDescription).sdp });
    }
  }

  /** @param {RTCIceCandidateInit | null} candidate */
  async _addCandidate(candidate) {
    try {
      // null is end-of-candidates: addIceCandidate() with no candidate says the same.
      await (candidate ? this.pc.addIceCandidate(candidate) : this.pc.addIceCandidate());
    } catch (error) {
      // Candidates of an offer we ignored (impolite side of a collision) are expected to fail.
      if (!this._ignoreOffer && candidate) throw error;
    }
  }

  _onIceState() {
    const state = this.pc.iceConnectionState;
    this.emit("state", state);
    clearTimeout(this._disconnectedTimer);
    if (this.connected) {
      this.iceRestarts = 0;
    } else if (state === "failed") {
      this.restartIce();
    } else if (state === "disconnected") {
      // Often recovers by itself (a lost packet or two); restart if it does not.
      this._disconnectedTimer = setTimeout(() => {
        if (!this.closed && this.pc.iceConnectionState === "disconnected") this.restartIce();
      }, ICE_DISCONNECTED_RESTART_MS);
    }
  }

  _updateIceServers() {
    if (this.closed) return;
    try {
      this.pc.setConfiguration({ ...this.pc.getConfiguration(), iceServers: this.call.client.iceServers });
    } catch (error) {
      console.warn("callbox: could not update the ICE servers", error);
    }
  }
}
