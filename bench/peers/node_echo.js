// node `ws` WebSocket echo / broadcast server for the benchmarks.
//   node bench/peers/node_echo.js PORT [echo|broadcast]
// ws is installed by bench/setup.sh into bench/node/node_modules.
'use strict';
const path = require('path');
const { WebSocketServer } = require(path.join(__dirname, '..', 'node', 'node_modules', 'ws'));

const port = Number(process.argv[2]);
const mode = process.argv[3] || 'echo';
if (!port) {
  console.error('usage: node node_echo.js PORT [echo|broadcast]');
  process.exit(2);
}
const wss = new WebSocketServer({ host: '127.0.0.1', port, perMessageDeflate: false, maxPayload: 1 << 20 });
wss.on('connection', (ws) => {
  ws.on('error', () => {});
  if (mode === 'broadcast') {
    ws.on('message', (data, isBinary) => {
      for (const c of wss.clients) if (c.readyState === 1) c.send(data, { binary: isBinary });
    });
  } else {
    ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  }
});
wss.on('listening', () => console.log(`node ws ${mode} on ws://127.0.0.1:${port}/`));
process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));
