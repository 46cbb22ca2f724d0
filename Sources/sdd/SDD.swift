// sdd: the command-line entry point (generate now; serve, convert, inspect and bench join it).

import ArgumentParser

@main
struct SDD: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sdd",
        abstract: "Stable Diffusion text-to-image for modest hardware.",
        subcommands: [Generate.self, Bench.self, Serve.self, Convert.self, Inspect.self])
}
