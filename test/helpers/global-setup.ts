// The CLI tests run the real `bin/usage-limiter.js`, which loads the compiled `dist/`. Build it once per
// test run so they never exercise stale output.
import { execFileSync } from 'node:child_process';

export default function setup(): void {
  execFileSync('npm', ['run', 'build', '--silent'], { stdio: 'inherit' });
}
