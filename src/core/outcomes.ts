// The outcome vocabulary: every answer the Check can give, keyed on `code`, with its HTTP status, the gRPC
// status Envoy sees in CheckResponse.status, and the message clients read. Codes double as metric labels.

export type DenyCode =
  | 'BAD_REQUEST'
  | 'MISSING_API_KEY'
  | 'INVALID_API_KEY'
  | 'TENANT_SUSPENDED'
  | 'READ_RATE_LIMIT_EXCEEDED'
  | 'USAGE_LIMIT_EXCEEDED'
  | 'USAGE_CHECK_UNAVAILABLE';

export type OutcomeCode = 'OK' | DenyCode;

/** google.rpc.Code values. */
export const GrpcCode = {
  OK: 0,
  INVALID_ARGUMENT: 3,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  UNAVAILABLE: 14,
  UNAUTHENTICATED: 16,
} as const;

export const OUTCOMES: Readonly<Record<DenyCode, { httpStatus: number; grpcCode: number }>> = {
  BAD_REQUEST: { httpStatus: 400, grpcCode: GrpcCode.INVALID_ARGUMENT },
  MISSING_API_KEY: { httpStatus: 401, grpcCode: GrpcCode.UNAUTHENTICATED },
  INVALID_API_KEY: { httpStatus: 401, grpcCode: GrpcCode.UNAUTHENTICATED },
  TENANT_SUSPENDED: { httpStatus: 403, grpcCode: GrpcCode.PERMISSION_DENIED },
  READ_RATE_LIMIT_EXCEEDED: { httpStatus: 429, grpcCode: GrpcCode.RESOURCE_EXHAUSTED },
  USAGE_LIMIT_EXCEEDED: { httpStatus: 429, grpcCode: GrpcCode.RESOURCE_EXHAUSTED },
  USAGE_CHECK_UNAVAILABLE: { httpStatus: 503, grpcCode: GrpcCode.UNAVAILABLE },
};

export const MESSAGES = {
  BAD_REQUEST: 'Malformed request.',
  MISSING_API_KEY:
    'API key required. Send it in the x-api-key header or as Authorization: Bearer <key>.',
  // One message for unknown, revoked and expired keys: which of them it was is not the caller's business.
  INVALID_API_KEY: 'Invalid API key.',
  TENANT_SUSPENDED: 'Tenant suspended. Please contact support.',
  READ_RATE_LIMIT_EXCEEDED: 'Too many read requests. Please slow down.',
  USAGE_CHECK_UNAVAILABLE: 'Usage check temporarily unavailable. Please retry shortly.',
  usageLimitExceeded: (usage: number, limit: number) =>
    `Usage limit exceeded. Current usage: ${usage}, Tier limit: ${limit}. Please upgrade your subscription.`,
} as const;
