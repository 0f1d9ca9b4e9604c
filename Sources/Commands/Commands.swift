// The command table and the entry point the `hgdpo` executable calls. Each command lives in its own file as a
// `CommandSpec`; this file only lists them and turns errors into messages and exit codes.
import Distributed
import IO
import Training
#if canImport(Glibc)
import Glibc
#endif

public enum Commands {
    public static let version = "0.1.0"

    public static let all: [CommandSpec] = [train, dataCheck, inspect, makeModel, makeCache, loraConvert, probeUNet,
                                            probeTextEncoder, probeVAEEncode, probeVAEDecode, probeScheduler, probeDPOLoss,
                                            probeMPI, benchStep, benchAllreduce, benchAttention, benchConv, encode, makeTriplets, sample, eval, report, reportTable,
                                            checkpointVerify, worldPrompts, worldRender, worldDataset, worldCheckScorer, worldRead, worldMakeModel,
                                            pool, score, select]

    public static let cli = CommandLineInterface(commands: all, version: version)

    /// Runs a command line (without the program name) and returns the process exit code: 0 success; errors are printed
    /// as `hgdpo: error: …` and give 2 (usage or input), 3 (diverged training) or 1 (failure), see `exitCode(for:)`.
    public static func main(_ arguments: [String]) -> Int32 {
        do {
            switch try cli.resolve(arguments) {
            case .help(let text): print(text)
            case .version(let text): print(text)
            case .run(let command, let parsed): try command.run(parsed)
            }
            return 0
        } catch {
            let code = exitCode(for: error)
            // With several ranks, one failing rank must end the job, not leave the others waiting in a collective.
            if let comm = Communicator.current, comm.size > 1 { comm.abort("error: \(error)", code: code) }
            fputs("hgdpo: error: \(error)\n", stderr)
            return code
        }
    }

    /// 2: a usage error or any error the user's input caused (a bad flag, file, setting or folder); 3: training
    /// stopped by --stop-on-divergence; 1: every other failure (MPI, a lost rank, the system).
    static func exitCode(for error: Error) -> Int32 {
        switch error {
        case is UserInputError: return 2
        case is TrainDivergedError: return 3
        default: return 1
        }
    }
}

extension JSONValue {
    func render(pretty: Bool) -> String { pretty ? self.pretty() : serialized() }
}
