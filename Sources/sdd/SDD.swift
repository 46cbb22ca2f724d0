// sdd: the command-line entry point: generate, bench, serve (the daemon, async), convert and inspect.

import ArgumentParser

@main
struct SDD: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sdd",
        abstract: "Stable Diffusion text-to-image for modest hardware.",
        subcommands: [Generate.self, Bench.self, Serve.self, Convert.self, Inspect.self])
}
