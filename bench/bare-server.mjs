// The ceiling the Check is measured against: a bare @grpc/grpc-js server on the same Envoy protos that
// answers every Check at once with a fixed OK response. Runs from the compiled dist/.
import * as grpc from '@grpc/grpc-js';
import { authorizationService } from '../dist/grpc/protos.js';

const port = Number(process.argv[2] ?? 19292);
const server = new grpc.Server();
const answer = { status: { code: 0 }, ok_response: { headers: [], headers_to_remove: [], response_headers_to_add: [] } };
server.addService(authorizationService().service, { Check: (_call, cb) => cb(null, answer) });
server.bindAsync(`127.0.0.1:${port}`, grpc.ServerCredentials.createInsecure(), (err, p) => {
  if (err) throw err;
  process.stdout.write(`bare server listening on ${p}\n`);
});
process.on('SIGTERM', () => server.forceShutdown());
