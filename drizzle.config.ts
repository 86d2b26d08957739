import { defineConfig } from 'drizzle-kit';

// Only `generate` needs this file; migrations are applied by `usage-limiter migrate` (and on start).
export default defineConfig({
  schema: './src/db/schema.ts',
  out: './drizzle',
  dialect: 'postgresql',
});
