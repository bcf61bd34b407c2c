// Two projects: `unit` needs no services; `integration` runs against the real local stack
// (Temporal, MariaDB, MinIO) that test/run-tests.ts starts before jest.
const base = {
  preset: 'ts-jest',
  testEnvironment: 'node',
  transform: { '^.+\\.ts$': ['ts-jest', { diagnostics: false }] },
  // dist/ holds the compiled build (npm run build): never tests, and its package.json would collide.
  modulePathIgnorePatterns: ['<rootDir>/dist/'],
};
module.exports = {
  projects: [
    { ...base, displayName: 'unit', testMatch: ['<rootDir>/test/unit/**/*.test.ts'] },
    { ...base, displayName: 'integration', testMatch: ['<rootDir>/test/integration/**/*.test.ts'] },
  ],
};
