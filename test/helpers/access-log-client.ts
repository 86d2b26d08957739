// A real gRPC client for envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs, sending what Envoy
// sends: the ext_authz dynamic metadata of the Check (as the Check answered it) and the response code.
import * as grpc from '@grpc/grpc-js';
import type { CheckResponseMessage } from '../../src/grpc/check-mapping.js';
import { accessLogService } from '../../src/grpc/protos.js';
import {
  EXT_AUTHZ_NAMESPACE,
  type HttpAccessLogEntryMessage,
  type StreamAccessLogsMessage,
} from '../../src/settlement/access-log-mapping.js';

/** The entry Envoy logs for a request whose Check answered `check`, ended with `responseCode` (0: none). */
export function entryFor(check: CheckResponseMessage, responseCode: number): HttpAccessLogEntryMessage {
  return {
    common_properties: {
      metadata: { filter_metadata: { [EXT_AUTHZ_NAMESPACE]: { fields: { ...(check.dynamic_metadata?.fields ?? {}) } } } },
    },
    response: responseCode === 0 ? {} : { response_code: { value: responseCode } },
  };
}

type StreamClient = grpc.Client & {
  StreamAccessLogs(cb: (err: grpc.ServiceError | null) => void): grpc.ClientWritableStream<StreamAccessLogsMessage>;
};

export class AccessLogClient {
  private readonly client: StreamClient;

  constructor(port: number) {
    const Client = accessLogService();
    this.client = new Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure()) as unknown as StreamClient;
  }

  /** One stream: an identifier first (as Envoy sends it), then each batch as a message; resolves once the server answers. */
  send(batches: readonly HttpAccessLogEntryMessage[][]): Promise<void> {
    return new Promise((resolve, reject) => {
      const call = this.client.StreamAccessLogs((err) => (err ? reject(err) : resolve()));
      batches.forEach((entries, i) => {
        call.write({
          ...(i === 0 ? { identifier: { log_name: 'usage-limiter-settlement' } } : {}),
          http_logs: { log_entry: entries },
        });
      });
      call.end();
    });
  }

  close(): void {
    this.client.close();
  }
}
