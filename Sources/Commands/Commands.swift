// The command table and the entry point the `hgdpo` executable calls. Each command lives in its own file as a
// `CommandSpec`; this file only lists them and turns errors into messages and exit codes.
import Distributed
import IO
#if canImport(Glibc)
import Glibc
#endif

public enum Commands {
    public static let version = "0.1.0"

    public static let all: [CommandSpec] = [train, dataCheck, inspect, makeModel, makeCache, loraConvert, probeUNet,
                                            probeTextEncoder, probeVAEEncode, probeVAEDecode, probeScheduler, probeDPOLoss,
                                            probeMPI, benchStep, benchAllreduce, benchAttention, benchConv, encode, makeTriplets, sample,
                                            pool, score, select]

    public static let cli = CommandLineInterface(commands: all, version: version)

    /// Runs a command line (without the program name) and returns the process exit code:
    /// 0 success, 2 a usage error or any error a user can cause (printed as `hgdpo: error: …`), 1 an internal failure.
    public static func main(_ arguments: [String]) -> Int32 {
        do {
            switch try cli.resolve(arguments) {
            case .help(let text): print(text)
            case .version(let text): print(text)
            case .run(let command, let parsed): try command.run(parsed)
            }
            return 0
        } catch {
            // With several ranks, one failing rank must end the job, not leave the others waiting in a collective.
            if let comm = Communicator.current, comm.size > 1 { comm.abort("error: \(error)", code: 2) }
            fputs("hgdpo: error: \(error)\n", stderr)
            return 2
        }
    }
}

extension JSONValue {
    func render(pretty: Bool) -> String { pretty ? self.pretty() : serialized() }
}
