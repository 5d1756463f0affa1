// node `ws` WebSocket echo / broadcast server for the benchmarks.
//   node bench/peers/node_echo.js PORT [echo|broadcast] [--tls-cert FILE --tls-key FILE]
// With --tls-cert/--tls-key it serves wss: ws on an https.Server.
// ws is installed by bench/setup.sh into bench/node/node_modules.
'use strict';
const path = require('path');
const { WebSocketServer } = require(path.join(__dirname, '..', 'node', 'node_modules', 'ws'));

const args = process.argv.slice(2);
const tls = {};
for (const flag of ['--tls-cert', '--tls-key']) {
  const i = args.indexOf(flag);
  if (i >= 0) {
    tls[flag] = args[i + 1];
    args.splice(i, 2);
  }
}
const port = Number(args[0]);
const mode = args[1] || 'echo';
if (!port || !['echo', 'broadcast'].includes(mode) || args.length > 2 || !tls['--tls-cert'] !== !tls['--tls-key']) {
  console.error('usage: node node_echo.js PORT [echo|broadcast] [--tls-cert FILE --tls-key FILE]');
  process.exit(2);
}
const opts = { perMessageDeflate: false, maxPayload: 1 << 20 };
let wss;
if (tls['--tls-cert']) {
  const fs = require('fs');
  const server = require('https').createServer({
    cert: fs.readFileSync(tls['--tls-cert']),
    key: fs.readFileSync(tls['--tls-key']),
  });
  wss = new WebSocketServer({ server, ...opts });
  server.listen(port, '127.0.0.1', () => console.log(`node ws ${mode} on wss://127.0.0.1:${port}/`));
} else {
  wss = new WebSocketServer({ host: '127.0.0.1', port, ...opts });
  wss.on('listening', () => console.log(`node ws ${mode} on ws://127.0.0.1:${port}/`));
}
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
process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));
