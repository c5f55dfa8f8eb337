import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";
import fs from "node:fs"; import path from "node:path";
const [tree, ...mods] = process.argv.slice(2);
const res = {};
for (const m of mods) {
  const out=[];
  const mp = await loadMicroPython({ heapsize: 1<<20, stdout: (s) => out.push(s), stderr: (s) => out.push(s) });
  function copyTree(src, dst) { for (const name of fs.readdirSync(src)) { const s = path.join(src, name); const d = dst + "/" + name;
      if (fs.statSync(s).isDirectory()) { mp.FS.mkdirTree(d); copyTree(s, d); } else { mp.FS.writeFile(d, fs.readFileSync(s)); } } }
  mp.FS.mkdirTree("/bench"); copyTree(tree, "/bench");
  mp.runPython("import gc, sys\nsys.path.insert(0, '/bench')");
  mp.runPython("gc.collect()"); mp.runPython("_a = gc.mem_alloc()");
  const a = mp.globals.get("_a");
  const ms = m.split("+");
  mp.runPython(ms.map(x=>"import "+x).join("\n"));
  mp.runPython("gc.collect()"); mp.runPython("_b = gc.mem_alloc(); _l=','.join(sorted(k[9:] for k in sys.modules if k.startswith('firmware')))");
  res[m] = [(mp.globals.get("_b")-a)/1024, mp.globals.get("_l")];
}
for (const k in res) console.log(k, res[k][0].toFixed(1), res[k][1]);
