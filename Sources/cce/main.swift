// cce: the command-line tool. `cce demo` (the main job), `cce bench`, `cce reference` and
// `cce compare` (the numerical reference over .npy files), `cce accuracy` (every mode's
// error), `cce train` (a small LM trained through the loss), `cce explain` (the algorithm
// on a tiny example, tile by tile).
// Errors print one line on standard error and exit with status 1.

import ArgumentParser
import Foundation

struct CCE: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cce",
        abstract: "Cut Cross-Entropy on the CPU: loss and gradients of a large-vocabulary classifier without the N x V logits.",
        subcommands: [Demo.self, BenchCommand.self, ReferenceCommand.self, CompareCommand.self, AccuracyCommand.self,
                      Train.self, Explain.self],
        defaultSubcommand: Demo.self)
}

do {
    var command = try CCE.parseAsRoot()
    try command.run()
} catch {
    let code = CCE.exitCode(for: error)
    if code == .success { CCE.exit(withError: error) }  // --help, --version
    let message = CCE.message(for: error).split(separator: "\n").first.map(String.init) ?? "\(error)"
    FileHandle.standardError.write(Data("cce: error: \(message)\n".utf8))
    exit(1)
}
