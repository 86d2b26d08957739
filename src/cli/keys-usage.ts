// The keys and alerts commands' usage text, apart from their code so that `--help` loads nothing else.
export const KEYS_USAGE = `  keys create --tenant T [--name N] [--expires ISO]
                             issue a key (printed once, on stdout)
  keys list --tenant T [--json]
                             a tenant's keys: id, prefix, name, created, expires, status
  keys revoke <prefix|id> [--tenant T]
                             revoke now (every replica stops accepting it within about a second)
  keys rotate <prefix|id> [--grace 24h] [--expires ISO] [--tenant T]
                             issue a replacement; the old key stays valid for the grace period
  alerts secret --tenant T   the secret a tenant's own alert webhook verifies signatures with
  alerts webhook --tenant T (--url URL | --clear)
                             where a tenant's own alerts are POSTed (besides ALERT_WEBHOOK_URL)`;
