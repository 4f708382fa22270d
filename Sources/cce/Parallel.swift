// `cce reference --parallel vocab|tokens` and `cce bench --parallel vocab|tokens`: the same
// commands across the ranks of mpirun (CutCrossEntropyMPI; Docs/SCALING.md).
//
//   mpirun -np P cce reference --parallel vocab ...   writes what one process writes, once,
//                                                      from rank 0
//   mpirun -np P cce bench --parallel tokens ...       time, per-rank peak memory and traffic
//
// Without mpirun the run is one rank and needs no MPI. Every rank reads the inputs (or makes
// the same seeded data) and keeps its part: vocabulary-parallel, its shard of C's rows and
// of the bias; token-parallel, its share of E's rows, with the targets they pair with.
//
// Errors: whatever can fail on one rank (reading a file, its shapes, writing the outputs on
// rank 0) runs inside `Communicator.agree`, and the schemes check that the ranks agree on
// sizes, element types and options; so a bad configuration prints the same error on every
// rank and every rank exits 1. An error the ranks have not agreed on (an MPI failure) ends
// the job through MPI_Abort rather than leave ranks waiting.

import ArgumentParser
import CCEBenchmarks
import CCEData
import CCEReference
import CCERuntime
import CutCrossEntropy
import CutCrossEntropyMPI
import Foundation

/// --parallel: how the work is split over the ranks.
enum ParallelScheme: String, ExpressibleByArgument, CaseIterable {
    /// Each rank holds a contiguous shard of C's rows; E and the targets everywhere.
    case vocab
    /// Each rank holds a contiguous share of E's rows (with their targets); C everywhere.
    case tokens
}

/// Runs `body` with the world communicator, then finalizes MPI. An agreed error (every rank
/// throws it) is printed by each rank, which then finalizes and exits 1; any other error with
/// more than one rank prints it and aborts the job.
func withWorld<R>(library: String?, _ body: (Communicator) throws -> R) throws -> R {
    let comm: Communicator
    do { comm = try Communicator.world(library: library) } catch { throw CLIError("\(error)") }
    do {
        let r = try body(comm)
        comm.finalize()
        return r
    } catch let e as ParallelError where e.isAgreed {
        // Each rank prints the error before MPI_Finalize, which the ranks leave together:
        // mpirun ends the job as soon as one rank exits non-zero, and a rank that printed
        // only after finalizing could be killed before its line was out.
        printError("\(e)")
        comm.finalize()
        exit(1)
    } catch {
        if comm.size == 1 { throw error }
        FileHandle.standardError.write(Data("cce: error: rank \(comm.rank): \(error) (ending every rank)\n".utf8))
        comm.abort(1)
    }
}

// MARK: - reference

extension ReferenceCommand {
    /// `--parallel`: the reference across the ranks; rank 0 writes the outputs.
    func runParallel(_ scheme: ParallelScheme) throws {
        guard backend == .cpu else { throw CLIError("--parallel runs the CPU engine; it does not take --backend cuda") }
        let o = try options()
        try withWorld(library: mpiLibrary) { comm in
            let inputs = try comm.agree { () -> ReferenceInputs in
                if comm.rank == 0 {
                    guard !out.isEmpty else { throw CLIError("--out is empty: name the output folder") }
                    try Reference.checkOutput(out, writing: Reference.outputNames(bias: bias != nil))
                }
                return try ReferenceInputs.load(embeddings: embeddings, classifier: classifier, targets: targets,
                                                bias: bias, ignoreIndex: ignoreIndex)
            }
            if comm.rank == 0 { for n in inputs.notes { FileHandle.standardError.write(Data("cce: note: \(n)\n".utf8)) } }
            let start = Date()
            let result = try scheme == .vocab ? vocabularyReference(inputs, o, comm) : tokenReference(inputs, o, comm)
            let seconds = Date().timeIntervalSince(start)
            var recorded = recordedOptions()
            recorded["parallel"] = scheme.rawValue
            recorded["ranks"] = "\(comm.size)"
            recorded["seconds"] = String(format: "%.6f", seconds)
            if let v = comm.mpiVersion { recorded["mpi"] = v.split(separator: "\n").first.map(String.init) ?? v }
            // Rank 0 writes; every rank learns whether it could.
            try comm.agree {
                guard comm.rank == 0, let result else { return }
                try Reference.write(result, to: out, options: recorded)
            }
            guard comm.rank == 0, let result else { return }
            let loss = result.arrays.first { $0.name == "loss.npy" }!.array
            let shown = loss.shape.isEmpty ? String(format: "%.9g", loss.doubles()[0]) : "per position, shape \(shapeText(loss.shape))"
            print("loss \(shown); wrote \(result.arrays.map(\.name).joined(separator: ", ")), meta.json into \(out) "
                  + "(cpu, \(mode.rawValue) mode, \(scheme.rawValue)-parallel over \(comm.size) rank\(comm.size == 1 ? "" : "s"), "
                  + String(format: "%.3f s)", seconds))
        }
    }

    /// The arrays as `Reference.computeCPU` writes them (rank 0; nil elsewhere).
    func referenceOutputs(_ inputs: ReferenceInputs, _ o: Options, loss: Double, tokenLosses: Values, lse: Values,
                          dE: Values, dC: Values, dBias: Values?, active: Int) -> ReferenceOutputs {
        let exact = o.mode == .exact
        func arr(_ v: Values, _ shape: [Int]) -> NPYArray {
            exact ? NPYArray(doubles: v.doubles, shape: shape) : NPYArray(floats: v.floats, shape: shape)
        }
        let lossArray: NPYArray = o.reduction == .none
            ? arr(tokenLosses, inputs.targets.shape)
            : (exact ? NPYArray(doubles: [loss], shape: []) : NPYArray(floats: [Float(loss)], shape: []))
        var arrays: [(String, NPYArray)] = [
            ("loss.npy", lossArray), ("lse.npy", arr(lse, inputs.targets.shape)),
            ("dE.npy", arr(dE, inputs.embeddings.shape)), ("dC.npy", arr(dC, inputs.classifier.shape)),
        ]
        if let dBias { arrays.append(("dBias.npy", arr(dBias, [inputs.classifier.shape[0]]))) }
        return ReferenceOutputs(arrays: arrays, meta: ["backend": "cpu", "mode": o.mode.rawValue,
                                                       "active_tokens": "\(active)"])
    }

    /// Vocabulary-parallel: this rank's shard of C and the bias; dC and dBias gathered on rank 0.
    func vocabularyReference(_ x: ReferenceInputs, _ o: Options, _ comm: Communicator) throws -> ReferenceOutputs? {
        let scheme = VocabularyParallel(comm, vocabulary: x.classifier.shape[0])
        let shard = scheme.shard
        let (c, b) = try comm.agree { (try x.classifier.rows(shard.range), try x.bias.map { try $0.rows(shard.range) }) }
        let upstream: Upstream = o.reduction == .none ? .perToken([Float](repeating: 1, count: x.targets.count)) : .scalar(1)
        let (f, g) = try scheme.lossAndGradients(CutCrossEntropy(options: o), embeddings: x.embeddings, classifier: c,
                                                 targets: x.targets, bias: b, upstream: upstream)
        let dC = try gatherValues(g.dC, comm), dBias = try g.dBias.map { try gatherValues($0, comm) }
        guard comm.rank == 0, let dC, let output = f.output else { return nil }
        return referenceOutputs(x, o, loss: f.loss, tokenLosses: output.tokenLosses, lse: output.lse, dE: g.dE, dC: dC,
                                dBias: dBias ?? nil, active: f.activeTokens)
    }

    /// Token-parallel: rank r holds rows [r·N/P, (r+1)·N/P) of E, flattened to (N, D), each
    /// with the target it pairs with (shift applied here, ignored where a row has none), so
    /// the ranks run with shift 0; rank 0 puts the losses and LSE back at their positions.
    func tokenReference(_ x: ReferenceInputs, _ o: Options, _ comm: Communicator) throws -> ReferenceOutputs? {
        let d = x.embeddings.shape.last!, n = x.embeddings.count / d
        let seqLen = x.embeddings.shape.count == 3 ? x.embeddings.shape[1] : n
        // position[row]: the target position row pairs with, or -1.
        let position = (0..<n).map { row in row % seqLen + o.shift < seqLen ? row + o.shift : -1 }
        let r0 = comm.rank * n / comm.size, r1 = (comm.rank + 1) * n / comm.size
        var local = o
        local.shift = 0
        let (e, t) = try comm.agree { () -> (Tensor, Targets) in
            let e = try x.embeddings.reshaped([n, d]).rows(r0..<r1)
            let t = try Targets((r0..<r1).map { position[$0] >= 0 ? x.targets.values[position[$0]] : Int32(clamping: o.ignoreIndex) })
            return (e, t)
        }
        let upstream: Upstream = o.reduction == .none ? .perToken([Float](repeating: 1, count: r1 - r0)) : .scalar(1)
        let (f, g) = try TokenParallel(comm).lossAndGradients(CutCrossEntropy(options: local), embeddings: e,
                                                             classifier: x.classifier, targets: t, bias: x.bias,
                                                             upstream: upstream)
        let exact = o.mode == .exact
        func filled(_ v: Double, _ count: Int) -> Values {
            exact ? .float64(.init(repeating: v, count: count)) : .float32(.init(repeating: Float(v), count: count))
        }
        let rowLosses = try gatherValues(f.output?.tokenLosses ?? filled(0, r1 - r0), comm)
        let rowLSE = try gatherValues(f.output?.lse ?? filled(.nan, r1 - r0), comm)
        let dE = try gatherValues(g.dE, comm)
        guard comm.rank == 0, let rowLosses, let rowLSE, let dE else { return nil }
        var losses = [Double](repeating: 0, count: x.targets.count), lse = [Double](repeating: .nan, count: x.targets.count)
        for row in 0..<n where position[row] >= 0 {
            losses[position[row]] = rowLosses[row]; lse[position[row]] = rowLSE[row]
        }
        func values(_ v: [Double]) -> Values { exact ? .float64(v) : .float32(v.map { Float($0) }) }
        return referenceOutputs(x, o, loss: f.loss, tokenLosses: values(losses), lse: values(lse), dE: dE, dC: g.dC,
                                dBias: g.dBias, active: f.activeTokens)
    }
}

/// User and system CPU time of this process so far, every thread.
func processCPUSeconds() -> Double {
    var usage = rusage()
    getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &usage)
    func seconds(_ t: timeval) -> Double { Double(t.tv_sec) + Double(t.tv_usec) * 1e-6 }
    return seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// Every rank's values end to end, on rank 0 (nil elsewhere), in their type.
func gatherValues(_ v: Values, _ comm: Communicator) throws -> Values? {
    switch v {
    case .float32(let x): let all = try comm.gather(x); return comm.rank == 0 ? .float32(all.flatMap { $0 }) : nil
    case .float64(let x): let all = try comm.gather(x); return comm.rank == 0 ? .float64(all.flatMap { $0 }) : nil
    }
}

// MARK: - bench

extension BenchCommand {
    /// `--parallel`: loss and loss+grad of the scheme on LM-like data, every rank making the
    /// same data and keeping its part. Per kind: the median over repeats of the step's time
    /// (the slowest rank's, between barriers), each rank's peak memory beyond its inputs and
    /// returned gradients, and the bytes each rank sent and received in the step.
    func runParallel(_ scheme: ParallelScheme) throws {
        let (tokens, dim, vocab, dtype) = (problem.tokens, problem.dim, problem.vocab, problem.dtype)
        guard repeats >= 1, tokens > 0, dim > 0, vocab > 0 else { throw CLIError("sizes and --repeats must be positive") }
        let kindList = kinds.map { $0.split(separator: ",").map { String($0).trimmingCharacters(in: .whitespaces) } }
            ?? ["loss", "loss+grad"]
        if let bad = kindList.first(where: { !["loss", "loss+grad"].contains($0) }) {
            throw CLIError("--parallel runs the kinds loss and loss+grad, not '\(bad)'")
        }
        try withWorld(library: mpiLibrary) { comm in
            let say: (String) -> Void = { s in if comm.rank == 0 && !json { FileHandle.standardError.write(Data((s + "\n").utf8)) } }
            say("every rank makes LM-like data N=\(tokens) D=\(dim) V=\(vocab) \(dtype.rawValue) (seed \(problem.seed))…")
            try comm.agree {
                try MemoryCheck.require(Footprint.lmLikeData(tokens: tokens, dim: dim, vocab: vocab, type: dtype),
                                        for: "N = \(tokens), D = \(dim), V = \(vocab) (\(dtype.rawValue)) on each rank")
            }
            var options = Options()
            options.threads = engine.resolvedThreads
            let cce = CutCrossEntropy(options: options)
            let step: (Bool) throws -> (loss: Double, gradientBytes: Int)
            let data = LMLikeData.make(tokens: tokens, dim: dim, vocab: vocab, type: dtype, seed: problem.seed)
            var heldBytes = 0, keptGradientBytes = 0
            var savedLogits = 0   // what the last vocabulary-parallel loss+grad step kept (FilterStatistics.savedLogits)
            var buffers: [UnsafeMutableRawPointer] = []
            defer { for b in buffers { b.deallocate() } }
            switch scheme {
            case .vocab:
                let vp = VocabularyParallel(comm, vocabulary: vocab)
                let c = try data.classifier.rows(vp.shard.range)
                let e = data.embeddings, t = data.targets
                heldBytes = (e.count + c.count) * dtype.size
                // The gradients go into buffers kept from step to step, as a training loop
                // keeps them (and as the one-process `cce bench` row does).
                let dE = UnsafeMutableBufferPointer<Float>.allocate(capacity: e.count)
                let dC = UnsafeMutableBufferPointer<Float>.allocate(capacity: c.count)
                buffers = [UnsafeMutableRawPointer(dE.baseAddress!), UnsafeMutableRawPointer(dC.baseAddress!)]
                keptGradientBytes = (e.count + c.count) * 4
                step = { grad in
                    if grad {
                        let (f, fs) = try vp.lossAndGradients(cce, embeddings: e, classifier: c, targets: t,
                                                              writingTo: GradientDestination(dE: dE, dC: dC))
                        savedLogits = fs.savedLogits
                        return (f.loss, 0)
                    }
                    return (try vp.forward(cce, embeddings: e, classifier: c, targets: t).loss, 0)
                }
            case .tokens:
                let r0 = comm.rank * tokens / comm.size, r1 = (comm.rank + 1) * tokens / comm.size
                let e = try data.embeddings.rows(r0..<r1), c = data.classifier
                let t = try Targets(Array(data.targets.values[r0..<r1]))
                heldBytes = (e.count + c.count) * dtype.size
                var tp = TokenParallel(comm)
                tp.checksInputs = false   // the same seeded C on every rank; a checksum pass per step is not the engine's time
                step = { grad in
                    if grad {
                        let (f, g) = try tp.lossAndGradients(cce, embeddings: e, classifier: c, targets: t)
                        return (f.loss, g.dE.byteCount + g.dC.byteCount)
                    }
                    return (try tp.forward(cce, embeddings: e, classifier: c, targets: t).loss, 0)
                }
            }
            // Only this rank's part stays: the full data goes before the timing.
            _ = consume data
            var rows: [[String: Any]] = []
            for kind in kindList {
                let grad = kind == "loss+grad"
                _ = try step(grad)   // warm-up
                var times: [Double] = []
                var loss = 0.0
                let cpu0 = processCPUSeconds(), comm0 = comm.traffic.seconds
                for _ in 0..<repeats {
                    try comm.barrier()
                    let t0 = Date()
                    loss = try step(grad).loss
                    try comm.barrier()
                    times.append(Date().timeIntervalSince(t0))
                }
                // CPU time of this rank per step (user + system, every thread; MPI's polling
                // while it waits included), and its time inside collectives.
                let cpuPerStep = (processCPUSeconds() - cpu0) / Double(repeats)
                let commPerStep = (comm.traffic.seconds - comm0) / Double(repeats)
                // One more step for memory and traffic.
                let before = comm.traffic
                let (result, peak) = try MemoryProbe.measure { try step(grad) }
                let sent = comm.traffic.bytesSent - before.bytesSent, received = comm.traffic.bytesReceived - before.bytesReceived
                let commSeconds = comm.traffic.seconds - before.seconds
                let perRank = try comm.gather([Double(max(0, peak - result.gradientBytes)), Double(sent), Double(received),
                                               commSeconds, Double(grad ? max(result.gradientBytes, keptGradientBytes) : 0),
                                               Double(heldBytes), cpuPerStep,
                                               commPerStep, Double(grad ? savedLogits : 0)])
                let slowest = try comm.allGather(times).reduce([Double](repeating: 0, count: repeats)) { acc, t in
                    zip(acc, t).map { max($0, $1) }
                }
                let sorted = slowest.sorted()
                rows.append(["kind": kind, "median_seconds": sorted[sorted.count / 2], "min_seconds": sorted[0], "loss": loss,
                             "ranks": perRank.enumerated().map { r, v in
                                 ["rank": r, "peak_bytes": Int(v[0]), "sent_bytes": Int(v[1]), "received_bytes": Int(v[2]),
                                  "communication_seconds": v[3], "gradient_bytes": Int(v[4]), "input_bytes": Int(v[5]),
                                  "cpu_seconds_per_step": v[6], "communication_seconds_per_step": v[7],
                                  "saved_logits": Int(v[8])] as [String: Any]
                             }])
            }
            guard comm.rank == 0 else { return }
            let shard = VocabularyShard.split(vocabulary: vocab, parts: comm.size)[0]
            let report: [String: Any] = [
                "parallel": scheme.rawValue, "ranks": comm.size, "threads_per_rank": options.threads ?? 0,
                "kernel": cce.tileKernel(embeddings: dtype, classifier: dtype).rawValue,
                // Rank 0's, which every rank takes (VocabularyParallel); token-parallel has none.
                "exchange_chunk": scheme == .vocab ? cce.resolvedExchangeChunk : 0,
                "machine": Bench.machineDescription(), "mpi": comm.mpiVersion ?? "none (one rank)",
                "tokens": tokens, "dim": dim, "vocab": vocab, "dtype": dtype.rawValue, "repeats": repeats,
                "rows": rows,
                // The logits one rank's part would materialize: N x V/P (vocab) or N/P x V (tokens), Float32.
                "part_logit_bytes": scheme == .vocab ? tokens * shard.count * 4 : (tokens + comm.size - 1) / comm.size * vocab * 4,
            ]
            if json {
                let data = try JSONSerialization.data(withJSONObject: report, options: [.prettyPrinted, .sortedKeys])
                print(String(decoding: data, as: UTF8.self))
                return
            }
            print("machine: \(Bench.machineDescription())")
            print("MPI: \(comm.mpiVersion.map { $0.split(separator: "\n").first.map(String.init) ?? $0 } ?? "none (one rank, no mpirun)")")
            print("shape: N=\(tokens) D=\(dim) V=\(vocab) \(dtype.rawValue); \(scheme.rawValue)-parallel over \(comm.size) "
                  + "rank\(comm.size == 1 ? "" : "s") x \(options.threads ?? 0) thread\(options.threads == 1 ? "" : "s"), repeats \(repeats); "
                  + "tile kernel \(report["kernel"] as! String)"
                  + (scheme == .vocab ? "; exchange chunk \(cce.resolvedExchangeChunk) tokens" : ""))
            print(String(format: "logits one rank's part would materialize: %.1f MB\n", Double(report["part_logit_bytes"] as! Int) / 1e6))
            print(pad("kind", 11) + lpad("median s", 10) + lpad("min s", 9) + "  " + pad("rank", 5) + lpad("peak MB", 9)
                  + lpad("inputs MB", 11) + lpad("grads MB", 10) + lpad("sent MB", 10) + lpad("recv MB", 10) + lpad("comm s", 9)
                  + lpad("cpu s", 9) + lpad("saved", 10))
            for row in rows {
                for (r, rank) in (row["ranks"] as! [[String: Any]]).enumerated() {
                    let head = r == 0 ? pad(row["kind"] as! String, 11) + lpad(String(format: "%.3f", row["median_seconds"] as! Double), 10)
                        + lpad(String(format: "%.3f", row["min_seconds"] as! Double), 9)
                        : String(repeating: " ", count: 30)
                    func mb(_ k: String) -> String { String(format: "%.2f", Double(rank[k] as! Int) / 1e6) }
                    print(head + "  " + pad("\(r)", 5) + lpad(mb("peak_bytes"), 9) + lpad(mb("input_bytes"), 11)
                          + lpad(mb("gradient_bytes"), 10) + lpad(mb("sent_bytes"), 10) + lpad(mb("received_bytes"), 10)
                          + lpad(String(format: "%.3f", rank["communication_seconds_per_step"] as! Double), 9)
                          + lpad(String(format: "%.2f", rank["cpu_seconds_per_step"] as! Double), 9)
                          + lpad("\(rank["saved_logits"] as! Int)", 10))
                }
            }
            print("\npeak: beyond the rank's inputs and its gradients (vocab: buffers kept from step to step; tokens: returned); sent/recv: the payload of one step's collectives "
                  + "(Communicator.traffic); comm s: time inside them per step, waiting for other ranks included; cpu s: the "
                  + "rank's CPU time per step (every thread, MPI's polling included); saved: logits the rank's forward kept "
                  + "for its backward in a loss+grad step (6 bytes each while their chunk is in flight).")
        }
    }
}
