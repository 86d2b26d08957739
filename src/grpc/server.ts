import { randomUUID } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { HealthImplementation, type ServingStatus } from 'grpc-health-check';
import { toCheckInput } from '../core/request.js';
import type { Logger } from '../logger.js';
import type { CheckService } from '../service/check-service.js';
import type { RawHttpRequest } from '../core/request.js';
import { toCheckResponse, type CheckResponseMessage } from './check-mapping.js';
import { createCheckRequestDecoder } from './check-request-decoder.js';
import { createCheckResponseEncoder } from './check-response-encoder.js';
import { authorizationService } from './protos.js';

// The thin gRPC edge: decode (only the fields used), map to plain input, ask the CheckService, map back.
// A request that cannot be judged is answered with a 400 deny, never a gRPC error: Envoy would otherwise
// apply failure_mode_allow to a client's malformed request.

export const AUTH_SERVICE_NAME = 'envoy.service.auth.v3.Authorization';

export interface GrpcServerDeps {
  readonly checkService: CheckService;
  readonly logger: Logger;
  /** Extra services (e.g. the access log stream) registered on the same server. */
  readonly register?: (server: grpc.Server) => void;
}

export interface RunningGrpcServer {
  readonly server: grpc.Server;
  readonly port: number;
  setServing(status: ServingStatus): void;
  /** Stops accepting calls, lets in-flight ones finish (up to `graceMs`), then forces the rest. */
  shutdown(graceMs: number): Promise<void>;
}

function deadlineOf(call: grpc.ServerUnaryCall<unknown, unknown>): number {
  const d = call.getDeadline();
  if (d instanceof Date) return d.getTime();
  return typeof d === 'number' && Number.isFinite(d) ? d : Number.POSITIVE_INFINITY;
}

export function createCheckHandler(
  checkService: CheckService,
  logger: Logger,
): grpc.handleUnaryCall<RawHttpRequest, CheckResponseMessage> {
  return (call, callback) => {
    let requestId = '';
    try {
      const parsed = toCheckInput(call.request, randomUUID);
      requestId = parsed.ok ? parsed.input.requestId : parsed.requestId;
      if (!parsed.ok) {
        logger.debug({ requestId, reason: parsed.reason }, 'malformed CheckRequest denied');
        callback(null, toCheckResponse(checkService.badRequest(), requestId));
        return;
      }
      const input = parsed.input;
      // A call Envoy already gave up on (grpc-js cancels it at its deadline) is shed by the service.
      const deadlineMs = call.cancelled ? 0 : deadlineOf(call);
      checkService.check(input, deadlineMs).then(
        (decision) => {
          // Past the deadline Envoy has stopped waiting (this server's deadline is a little later than its):
          // the request is not forwarded, so what it reserved must not stand.
          if (call.cancelled || Date.now() >= deadlineMs) checkService.abandon(decision, input.requestId);
          callback(null, toCheckResponse(decision, input.requestId));
        },
        (err: unknown) => internalError(err),
      );
    } catch (err) {
      internalError(err);
    }

    // A bug, not a policy outcome: answer UNAVAILABLE so Envoy's own failure setting decides.
    function internalError(err: unknown): void {
      logger.error(
        { event: 'check.internal_error', requestId, err: err instanceof Error ? err.stack : String(err) },
        'Check failed unexpectedly',
      );
      callback({ code: grpc.status.UNAVAILABLE, details: 'internal error' });
    }
  };
}

/**
 * The Authorization service as the server registers it: Envoy's definition, with the Check's request
 * deserializer replaced by the selective decoder (the handler receives the RawHttpRequest directly) and its
 * response serializer by the hand-written encoder.
 */
function checkServiceDefinition(): grpc.ServiceDefinition {
  const full = authorizationService().service;
  const check = full.Check;
  if (check === undefined) throw new Error('Authorization service has no Check method');
  const decode = createCheckRequestDecoder();
  const encode = createCheckResponseEncoder();
  return { ...full, Check: { ...check, requestDeserialize: decode, responseSerialize: encode } };
}

export async function startGrpcServer(
  deps: GrpcServerDeps,
  host: string,
  port: number,
): Promise<RunningGrpcServer> {
  const server = new grpc.Server({
    // Envoy keeps long-lived HTTP/2 connections; make sure dead ones are noticed.
    'grpc.keepalive_time_ms': 60_000,
    'grpc.keepalive_timeout_ms': 20_000,
    'grpc.max_receive_message_length': 4 * 1024 * 1024,
    // channelz (per-call counters and traces for a channelz admin service, which this server does not
    // expose) allocated on every call: 3% of the Check's allocations under load.
    'grpc.enable_channelz': 0,
  });
  server.addService(checkServiceDefinition(), {
    Check: createCheckHandler(deps.checkService, deps.logger),
  });
  const health = new HealthImplementation({ '': 'NOT_SERVING', [AUTH_SERVICE_NAME]: 'NOT_SERVING' });
  health.addToServer(server);
  deps.register?.(server);

  const bound = await new Promise<number>((resolve, reject) => {
    server.bindAsync(`${host}:${port}`, grpc.ServerCredentials.createInsecure(), (err, p) =>
      err ? reject(err) : resolve(p),
    );
  });

  const setServing = (status: ServingStatus) => {
    health.setStatus('', status);
    health.setStatus(AUTH_SERVICE_NAME, status);
  };

  return {
    server,
    port: bound,
    setServing,
    shutdown: (graceMs) =>
      new Promise<void>((resolve) => {
        setServing('NOT_SERVING');
        const force = setTimeout(() => {
          server.forceShutdown();
          resolve();
        }, graceMs);
        force.unref();
        server.tryShutdown(() => {
          clearTimeout(force);
          resolve();
        });
      }),
  };
}
