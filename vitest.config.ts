import { defineConfig } from 'vitest/config';

// Tests that load the machine on purpose (chaos: services killed and paused under load; soak: a steady
// load for SOAK_SECONDS) run as a second group, alone and one file at a time, after everything else: on two
// cores they would otherwise starve the timing-sensitive integration tests running beside them.
const HEAVY = ['test/chaos/chaos-under-load.test.ts', 'test/soak/**/*.test.ts'];

export default defineConfig({
  test: {
    globalSetup: ['./test/helpers/global-setup.ts'],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    pool: 'forks',
    // Integration files start servers on real ports; two workers match the machine's two cores.
    poolOptions: { forks: { maxForks: 2, minForks: 1 } },
    reporters: ['default', './test/helpers/plain-summary-reporter.ts'],
    projects: [
      {
        extends: true,
        test: {
          name: 'main',
          include: ['test/**/*.test.ts'],
          exclude: HEAVY,
          sequence: { groupOrder: 0 },
        },
      },
      {
        extends: true,
        test: {
          name: 'heavy',
          include: HEAVY,
          poolOptions: { forks: { singleFork: true } },
          sequence: { groupOrder: 1 },
        },
      },
    ],
  },
});
