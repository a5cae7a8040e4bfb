// Build the page into the Python package (src/nnseg/serve/page/static): one minified script, the HTML and the CSS.
// Deterministic (no timestamps): the same sources and lockfile give the same bytes; build-info.json records the hash
// of the sources so a test can tell when the committed assets are older than web/src.
import { build } from "esbuild";
import { createHash } from "node:crypto";
import { copyFileSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";

const out = process.env.NNSEG_WEB_OUT ?? "../src/nnseg/serve/page/static";
rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });

// NiiVue's zarr reader imports numcodecs' WebAssembly codecs (1.4 MB) on demand; the page never opens zarr stores, so
// they are left out (a zarr file would get this error instead).
const noZarrCodecs = {
  name: "no-zarr-codecs",
  setup(b) {
    b.onResolve({ filter: /^numcodecs(\/|$)/ }, (args) => ({ path: args.path, namespace: "no-zarr-codecs" }));
    b.onLoad({ filter: /.*/, namespace: "no-zarr-codecs" }, () => ({
      contents: "export default { fromConfig() { throw new Error('zarr stores are not supported by the nnseg page'); } };",
      loader: "js",
    }));
  },
};

const result = await build({
  entryPoints: ["src/main.ts"],
  bundle: true,
  minify: true,
  format: "esm",
  target: ["chrome110", "firefox115", "safari16"],
  outfile: join(out, "app.js"),
  legalComments: "external",
  logLevel: "warning",
  plugins: [noZarrCodecs],
  metafile: true,
});
// the licences of the bundled npm packages, shipped beside the script
const packages = new Set();
for (const input of Object.keys(result.metafile.inputs)) {
  const m = input.match(/node_modules\/((?:@[^/]+\/)?[^/]+)\//);
  if (m) packages.add(m[1]);
}
const notices = [...packages].sort().map((name) => {
  const dir = join("node_modules", name);
  const meta = JSON.parse(readFileSync(join(dir, "package.json"), "utf8"));
  const file = readdirSync(dir).find((f) => /^(licen[cs]e|copying)/i.test(f));
  return `${name} ${meta.version} (${meta.license})\n\n${file ? readFileSync(join(dir, file), "utf8").trim() : "(no licence file)"}\n`;
});
writeFileSync(join(out, "third-party-licenses.txt"), notices.join("\n" + "-".repeat(78) + "\n\n"));
copyFileSync("src/index.html", join(out, "index.html"));
copyFileSync("src/style.css", join(out, "style.css"));

export function sourceHash() {
  const hash = createHash("sha256");
  const files = ["package-lock.json", ...readdirSync("src").sort().map((f) => `src/${f}`)];
  for (const file of files) {
    hash.update(file + "\0");
    hash.update(readFileSync(file));
  }
  return hash.digest("hex");
}
writeFileSync(join(out, "build-info.json"), JSON.stringify({ sources_sha256: sourceHash(), niivue: "0.69.0" }, null, 1) + "\n");
