// MQTT.js (npm `mqtt` 5.x), a client no one here wrote, against a broker; run by tests/interop.rs and
// tests/mosquitto_conf.rs. Prints one line per check and exits 0 with "ok" last, or prints why and exits 1.
//
//   node mqttjs_check.js roundtrip URL VERSION [USER PASSWORD]
//       connect, subscribe QoS 1, publish QoS 0/1/2 and receive them, a retained message for a later
//       subscriber, and (VERSION 5) a user property round trip
//   node mqttjs_check.js refused URL VERSION [USER PASSWORD]
//       the connection must be refused: prints "refused CODE" (the CONNACK return / reason code)
//
// URL is mqtt://127.0.0.1:PORT or ws://127.0.0.1:PORT/PATH; VERSION is 4 (MQTT 3.1.1) or 5.

"use strict";
const mqtt = require("mqtt");

const WAIT_MS = 10000;
const [mode, url, versionArg, username, password] = process.argv.slice(2);
const protocolVersion = Number(versionArg);
if (!["roundtrip", "refused"].includes(mode) || !url || ![4, 5].includes(protocolVersion)) {
  console.error("usage: mqttjs_check.js roundtrip|refused URL 4|5 [USER PASSWORD]");
  process.exit(2);
}
const run = Math.random().toString(36).slice(2, 10);

function options(clientId) {
  const o = { protocolVersion, clientId, reconnectPeriod: 0, connectTimeout: WAIT_MS, clean: true };
  if (username !== undefined) {
    o.username = username;
    o.password = password;
  }
  return o;
}

function connect(name) {
  return mqtt.connectAsync(url, options(`mqttjs-${name}-${run}`));
}

// The next message on `client` whose topic is `topic`, or a rejection after WAIT_MS.
function nextMessage(client, topic) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      client.removeListener("message", onMessage);
      reject(new Error(`no message on ${topic} within ${WAIT_MS} ms`));
    }, WAIT_MS);
    function onMessage(t, payload, packet) {
      if (t !== topic) return;
      clearTimeout(timer);
      client.removeListener("message", onMessage);
      resolve({ payload: payload.toString(), packet });
    }
    client.on("message", onMessage);
  });
}

function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
}

async function roundtrip() {
  const base = `mqttjs/${protocolVersion}/${run}`;
  const sub = await connect("sub");
  console.log("connected");
  const granted = await sub.subscribeAsync(`${base}/t/+`, { qos: 1 });
  check(granted.length === 1 && granted[0].qos === 1, `granted QoS 1, got ${JSON.stringify(granted)}`);
  console.log("subscribed qos 1");
  const pub = await connect("pub");
  for (const qos of [0, 1, 2]) {
    const topic = `${base}/t/q${qos}`;
    const arrived = nextMessage(sub, topic);
    await pub.publishAsync(topic, `hello ${qos}`, { qos });
    const m = await arrived;
    check(m.payload === `hello ${qos}`, `payload of QoS ${qos}: ${m.payload}`);
    check(m.packet.qos === Math.min(qos, 1), `QoS ${qos} delivered at ${m.packet.qos}`);
    console.log(`published and received qos ${qos}`);
  }
  const retainedTopic = `${base}/retained`;
  await pub.publishAsync(retainedTopic, "kept", { qos: 1, retain: true });
  const late = await connect("late");
  const arrived = nextMessage(late, retainedTopic);
  await late.subscribeAsync(retainedTopic, { qos: 1 });
  const r = await arrived;
  check(r.payload === "kept" && r.packet.retain === true, `retained: ${r.payload} retain=${r.packet.retain}`);
  await pub.publishAsync(retainedTopic, "", { qos: 1, retain: true });
  console.log("retained received");
  if (protocolVersion === 5) {
    const topic = `${base}/t/props`;
    const got = nextMessage(sub, topic);
    await pub.publishAsync(topic, "with properties", {
      qos: 1,
      properties: { userProperties: { site: "berlin", line: "7" } },
    });
    const m = await got;
    const up = (m.packet.properties || {}).userProperties || {};
    check(up.site === "berlin" && up.line === "7", `user properties: ${JSON.stringify(up)}`);
    console.log("user properties received");
  }
  await Promise.all([sub.endAsync(), pub.endAsync(), late.endAsync()]);
}

async function refused() {
  let client;
  try {
    client = await connect("refused");
  } catch (e) {
    if (e && typeof e.code === "number") {
      console.log(`refused ${e.code}`);
      return;
    }
    throw e;
  }
  await client.endAsync();
  throw new Error("the connection was accepted");
}

// A connection that fails before any answer can leave MQTT.js's promise unsettled with nothing left to run:
// Node would then exit 0 silently.
process.on("beforeExit", () => {
  console.log("failed: the client stopped without an outcome (connection closed or refused before CONNACK?)");
  process.exit(1);
});
setTimeout(() => {
  console.log("failed: no outcome within 60 s");
  process.exit(1);
}, 60000).unref();

(mode === "roundtrip" ? roundtrip() : refused())
  .then(() => {
    console.log("ok");
    process.exit(0);
  })
  .catch((e) => {
    console.log(`failed: ${e && e.message ? e.message : e}`);
    process.exit(1);
  });
