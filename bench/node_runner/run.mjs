// Runs bench/node_runner/node_loop.py under the official MicroPython WebAssembly port
// (npm @micropython/micropython-webassembly-pyscript) with a fixed heap, and measures the
// live heap from the top level between slices of the loop.
//
//   node run.mjs TREE HEAP_BYTES EVENTS SLICE [leak] [memory] [harness] [modules A,B,...]
//
// leak: a reference kept per event; memory: the journal on MemoryStorage (default: the
// node's FlashStorage over in-memory files); harness: no loop, only what the harness's
// module adds to the heap beyond the node's; modules: no loop, the heap each of the
// named modules adds when imported one by one in that order.
//
// TREE holds midshift/firmware/ (.py or .mpy) and node_loop.py; it is copied into the port's
// in-memory filesystem and put on sys.path. Prints one JSON line.
import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";
import fs from "node:fs";
import path from "node:path";

const [tree, heapArg, eventsArg, sliceArg, ...flags] = process.argv.slice(2);
const heapsize = parseInt(heapArg, 10);
const events = parseInt(eventsArg, 10);
const slice = parseInt(sliceArg, 10);
const out = [];
const mp = await loadMicroPython({ heapsize, stdout: (s) => out.push(s), stderr: (s) => out.push(s) });

function copyTree(src, dst) {
  for (const name of fs.readdirSync(src)) {
    const s = path.join(src, name);
    const d = dst + "/" + name;
    if (fs.statSync(s).isDirectory()) {
      mp.FS.mkdirTree(d);
      copyTree(s, d);
    } else {
      mp.FS.writeFile(d, fs.readFileSync(s));
    }
  }
}
mp.FS.mkdirTree("/bench");
copyTree(tree, "/bench");

const py = (code) => mp.runPython(code);
// runPython returns nothing for statements: results come back through a global.
const value = (expr) => { py("_v = " + expr); return mp.globals.get("_v"); };
// This port never collects inside running code (it cannot scan the wasm stack): a
// gc.collect() there, or a full heap, only marks a collection pending and grows the heap,
// and the collection runs when control returns to the top level, with no Python frame
// live. So collect in one call and read mem_alloc in the next: only live objects remain.
const live = () => { py("gc.collect()"); return value("gc.mem_alloc()"); };
const result = { heapsize, events, slice, live: [], slice_alloc: [] };
try {
  py("import gc, sys\nsys.path[:0] = ['/bench', '/bench/lib']");
  if (flags.includes("modules")) {
    // What each module the running node holds costs to import: one by one, in the order
    // given (leaf first, so each is charged its own bytecode, objects and names only),
    // after the harness's module (the names both use are charged to the harness).
    // The names' part: the growth of MicroPython's name (qstr) pool, as qstr_info prints it.
    const names = () => {
      py("import micropython\nmicropython.qstr_info()");
      return parseInt(/n_total_bytes=(\d+)/.exec(out[out.length - 1])[1], 10);
    };
    const kib = (n) => Math.round(n / 10.24) / 100;
    py("import node_loop\nsys.modules['socket'] = node_loop.Sockets");
    result.import_kib = {};
    result.names_kib = {};
    let before = live();
    let namesBefore = names();
    for (const name of flags[flags.indexOf("modules") + 1].split(",")) {
      py("import " + name);
      const now = live();
      const namesNow = names();
      result.import_kib[name] = kib(now - before);
      result.names_kib[name] = kib(namesNow - namesBefore);
      before = now;
      namesBefore = namesNow;
    }
    result.ok = true;
    console.log(JSON.stringify(result));
    process.exit(0);
  }
  if (flags.includes("harness")) {
    // What the harness's own module adds to the heap beyond the node's: the node imported
    // first (umqtt.simple looks its socket module up only at connect), then the harness,
    // whose names the node already holds are then not counted against it.
    py("import node_build\nnode_build.import_node(sys)\ndel sys.modules['node_build']\n" +
       "del node_build");
    result.heap_node_only = live();
    py("import node_loop");
    result.heap_with_harness = live();
    result.ok = true;
    console.log(JSON.stringify(result));
    process.exit(0);
  }
  result.heap_empty = live();
  py("import node_loop");
  result.heap_after_loop_module = live();
  py("import node_loop as _n\n_n.import_node()");
  result.heap_after_import = live();
  // The journal on the node's own FlashStorage, its files in the port's in-memory
  // filesystem (outside the Python heap, as a board's flash is outside its RAM); with
  // "memory", on the core's MemoryStorage (a bytearray in the heap, subtracted).
  mp.FS.mkdirTree("/flash");
  const flash = flags.includes("memory") ? "None" : '"/flash/journal"';
  py(`node_loop.setup(leak_per_event=${flags.includes("leak") ? "True" : "False"}, ` +
     `flash_dir=${flash})`);
  result.heap_after_setup = live();
  let loopNs = 0n;
  for (let done = 0; done < events; done += slice) {
    const n = Math.min(slice, events - done);
    const a = process.hrtime.bigint();
    py(`node_loop.run(${n})`);
    // live heap before the slice + everything the slice allocated: an upper bound of the
    // slice's own peak (nothing was freed inside it)
    py("gc.collect()");  // a board collects too: its time counts in the throughput
    loopNs += process.hrtime.bigint() - a;
    result.slice_alloc.push(value("node_loop.state['slice_alloc']"));
    result.live.push(value("gc.mem_alloc()"));
  }
  result.loop_s = Number(loopNs) / 1e9;
  result.loop = JSON.parse(value("__import__('json').dumps(node_loop.result())"));
  result.ok = true;
} catch (e) {
  result.ok = false;
  result.error = String(e).slice(0, 2000);
}
result.output = out.slice(-20);
console.log(JSON.stringify(result));
