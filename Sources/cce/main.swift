// cce: the command-line tool. `cce demo` (the main job), `cce bench`, `cce reference` and
// `cce compare` (the numerical reference over .npy files), `cce accuracy` (every mode's
// error), `cce train` (a small LM trained through the loss), `cce explain` (the algorithm
// on a tiny example, tile by tile). Bare `cce` prints the help and the README's two
// commands; `cce --version` prints the version.
// Errors print one line on standard error and exit with status 1.

import ArgumentParser
import Foundation

/// The package version, in this one place: `cce --version` prints it.
enum CCEVersion {
    static let string = "0.4.0"
}

struct CCE: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cce",
        abstract: "Cut Cross-Entropy on the CPU: loss and gradients of a large-vocabulary classifier without the N x V logits.",
        version: CCEVersion.string,
        subcommands: [Demo.self, BenchCommand.self, ReferenceCommand.self, CompareCommand.self, AccuracyCommand.self,
                      Train.self, Explain.self, SelfCheckCommand.self])

    /// The names of the commands, in the help's order.
    static var commandNames: [String] { configuration.subcommands.map { $0._commandName } }

    /// The README's two commands, for a first run.
    static let startHere = """
        Start here (from the repository root; the README's two commands):
          scripts/setup.sh && swift run -c release cce demo
              the main job: LM-like data, the materialized baseline and CCE side by side
          scripts/setup.sh && swift test -c release --disable-swift-testing && scripts/test_python.sh --torch=auto
              the whole test suite
        With the tool built: `cce demo`, or `cce help COMMAND` for one command's options.
        """

    /// Bare `cce`: the help and the two commands, nothing run.
    func run() throws {
        print(CCE.helpMessage())
        print("")
        print(CCE.startHere)
    }
}

/// `cce help NAME ...`: every NAME must be a command (the parser would print the root help
/// and exit 0 for an unknown one). Returns the error line, or nil when the names are fine.
func unknownHelpTopic(_ args: [String]) -> String? {
    guard args.first == "help", args.count > 1 else { return nil }
    let names = CCE.commandNames
    let topic = args[1]
    if !names.contains(topic) {
        return "unknown command '\(topic)'; the commands are: \(names.joined(separator: ", "))"
    }
    if args.count > 2 {
        return "'\(topic)' has no subcommand '\(args[2])'; the commands are: \(names.joined(separator: ", "))"
    }
    return nil
}

if let message = unknownHelpTopic(Array(CommandLine.arguments.dropFirst())) {
    printError(message)
    exit(1)
}

do {
    var command = try CCE.parseAsRoot()
    try command.run()
} catch {
    let code = CCE.exitCode(for: error)
    if code == .success { CCE.exit(withError: error) }  // --help, --version
    let message = CCE.message(for: error)
    printError(message.contains(where: { $0 != "\n" }) ? message : "\(error)")
    exit(1)
}
