// Hand-written argument parsing, shared by every command: `hgdpo <command> [subcommand] [arguments] [options]`.
// Options are `--name value` or `--name=value`; flags are `--name`. Unknown options, missing or malformed values
// are `CLIError`s (exit code 2) that name the option and say what was expected. `--help` anywhere prints the
// command's help, with every option and its default.
import IO

public enum CLIError: Error, UserInputError, CustomStringConvertible, Equatable {
    case unknownCommand(String, suggestion: String?)
    case unknownOption(command: String, option: String, suggestion: String?)
    case missingValue(option: String)
    case badValue(option: String, value: String, expected: String)
    case missingRequired(option: String, command: String)
    case unexpectedArgument(command: String, argument: String)
    case missingArgument(command: String, name: String)
    case repeatedOption(option: String)
    case invalid(String)

    public var description: String {
        switch self {
        case .unknownCommand(let c, let s):
            return "unknown command '\(c)'" + (s.map { " (did you mean '\($0)'?)" } ?? "") + "; see 'hgdpo --help'"
        case .unknownOption(let c, let o, let s):
            return "unknown option '\(o)' for 'hgdpo \(c)'" + (s.map { " (did you mean '\($0)'?)" } ?? "")
                + "; see 'hgdpo \(c) --help'"
        case .missingValue(let o): return "option '\(o)' needs a value"
        case .badValue(let o, let v, let e): return "invalid value '\(v)' for '\(o)': expected \(e)"
        case .missingRequired(let o, let c): return "'hgdpo \(c)' needs '\(o)'; see 'hgdpo \(c) --help'"
        case .unexpectedArgument(let c, let a): return "unexpected argument '\(a)' for 'hgdpo \(c)'; see 'hgdpo \(c) --help'"
        case .missingArgument(let c, let n): return "'hgdpo \(c)' needs the argument \(n); see 'hgdpo \(c) --help'"
        case .repeatedOption(let o): return "option '\(o)' is given more than once"
        case .invalid(let m): return m
        }
    }
}

/// One option of a command. `valueName == nil` makes it a flag.
public struct OptionSpec: Sendable {
    public let name: String
    public let valueName: String?
    public let help: String
    public let defaultValue: String?
    public let required: Bool
    public let choices: [String]?
    /// May be given several times (read with `strings`).
    public var repeatable = false

    public static func value(_ name: String, _ valueName: String, _ help: String, default defaultValue: String? = nil,
                             required: Bool = false, choices: [String]? = nil) -> OptionSpec {
        OptionSpec(name: name, valueName: valueName, help: help, defaultValue: defaultValue, required: required, choices: choices)
    }

    /// An option that may be repeated (`--scorer A --scorer B`).
    public static func list(_ name: String, _ valueName: String, _ help: String) -> OptionSpec {
        OptionSpec(name: name, valueName: valueName, help: help + " (repeatable)", defaultValue: nil, required: false, choices: nil,
                   repeatable: true)
    }

    public static func flag(_ name: String, _ help: String) -> OptionSpec {
        OptionSpec(name: name, valueName: nil, help: help, defaultValue: nil, required: false, choices: nil)
    }

    var isFlag: Bool { valueName == nil }
}

public struct ArgumentSpec: Sendable {
    public let name: String
    public let help: String
    public let required: Bool
    public init(_ name: String, _ help: String, required: Bool = true) { self.name = name; self.help = help; self.required = required }
}

/// A command: its words (`["probe", "unet"]`), its help, its arguments and options, and what it runs.
public struct CommandSpec: Sendable {
    public let words: [String]
    public let summary: String
    public let details: String?
    public let arguments: [ArgumentSpec]
    public let options: [OptionSpec]
    public let run: @Sendable (ParsedArguments) throws -> Void

    public init(_ words: [String], summary: String, details: String? = nil, arguments: [ArgumentSpec] = [],
                options: [OptionSpec], run: @escaping @Sendable (ParsedArguments) throws -> Void) {
        self.words = words; self.summary = summary; self.details = details
        self.arguments = arguments; self.options = options; self.run = run
    }

    public var name: String { words.joined(separator: " ") }

    func option(_ name: String) -> OptionSpec? { options.first { $0.name == name } }

    public var help: String {
        var lines: [String] = []
        let argUsage = arguments.map { $0.required ? $0.name : "[\($0.name)]" }.joined(separator: " ")
        lines.append("Usage: hgdpo \(name)\(argUsage.isEmpty ? "" : " " + argUsage) [options]")
        lines.append("")
        lines.append(summary)
        if let details { lines.append(""); lines.append(details) }
        if !arguments.isEmpty {
            lines.append("")
            lines.append("Arguments:")
            let w = arguments.map(\.name.count).max() ?? 0
            for a in arguments { lines.append("  " + a.name.padding(w) + "  " + a.help) }
        }
        lines.append("")
        lines.append("Options:")
        let heads = options.map { $0.name + ($0.valueName.map { " " + $0 } ?? "") } + ["-h, --help"]
        let w = heads.map(\.count).max() ?? 0
        for (o, head) in zip(options, heads) {
            var text = o.help
            if let c = o.choices { text += " (one of: \(c.joined(separator: ", ")))" }
            if o.required { text += " (required)" } else if let d = o.defaultValue { text += " (default: \(d))" }
            lines.append("  " + head.padding(w) + "  " + text)
        }
        lines.append("  " + "-h, --help".padding(w) + "  Show this help")
        return lines.joined(separator: "\n")
    }

    /// Parses the words after the command's own words.
    public func parse(_ args: [String]) throws -> ParsedArguments {
        var values: [String: String] = [:]
        var lists: [String: [String]] = [:]
        var flags: Set<String> = []
        var positionals: [String] = []
        var i = 0
        var onlyPositionals = false
        while i < args.count {
            let a = args[i]
            i += 1
            if onlyPositionals || !a.hasPrefix("-") || a == "-" || Double(a) != nil && !a.hasPrefix("--") {
                positionals.append(a)
                continue
            }
            if a == "--" { onlyPositionals = true; continue }
            var name = a
            var inline: String?
            if let eq = a.firstIndex(of: "=") {
                name = String(a[..<eq]); inline = String(a[a.index(after: eq)...])
            }
            guard let spec = option(name) else {
                throw CLIError.unknownOption(command: self.name, option: name,
                                             suggestion: closestMatch(name, among: options.map(\.name)))
            }
            if spec.isFlag {
                if let inline {
                    switch inline.lowercased() {
                    case "true", "1", "yes": flags.insert(name)
                    case "false", "0", "no": flags.remove(name)
                    default: throw CLIError.badValue(option: name, value: inline, expected: "true or false")
                    }
                } else { flags.insert(name) }
                continue
            }
            let value: String
            if let inline { value = inline } else {
                guard i < args.count, !(args[i].hasPrefix("--") && args[i].count > 2) else { throw CLIError.missingValue(option: name) }
                value = args[i]; i += 1
            }
            if spec.repeatable { lists[name, default: []].append(value); continue }
            if values[name] != nil { throw CLIError.repeatedOption(option: name) }
            if let choices = spec.choices, !choices.contains(value) {
                throw CLIError.badValue(option: name, value: value, expected: "one of " + choices.joined(separator: ", "))
            }
            values[name] = value
        }
        for o in options where o.required && values[o.name] == nil {
            throw CLIError.missingRequired(option: o.name, command: name)
        }
        if positionals.count > arguments.count {
            throw CLIError.unexpectedArgument(command: name, argument: positionals[arguments.count])
        }
        for (k, a) in arguments.enumerated() where a.required && k >= positionals.count {
            throw CLIError.missingArgument(command: name, name: a.name)
        }
        return ParsedArguments(command: self, values: values, lists: lists, flags: flags, positionals: positionals)
    }
}

/// What the user gave a command, with typed access; defaults come from the command's `OptionSpec`s.
public struct ParsedArguments: Sendable {
    public let command: CommandSpec
    let values: [String: String]
    var lists: [String: [String]] = [:]
    let flags: Set<String>
    public let positionals: [String]

    private func spec(_ name: String) -> OptionSpec {
        guard let s = command.option(name) else { preconditionFailure("'\(command.name)' has no option \(name)") }
        return s
    }

    /// Whether the user gave this option on the command line.
    public func given(_ name: String) -> Bool { values[name] != nil || lists[name] != nil || flags.contains(name) }

    public func flag(_ name: String) -> Bool { _ = spec(name); return flags.contains(name) }

    /// Every value of a repeatable option, in order.
    public func strings(_ name: String) -> [String] { _ = spec(name); return lists[name] ?? [] }

    public func string(_ name: String) -> String? { values[name] ?? spec(name).defaultValue }

    public func requiredString(_ name: String) throws -> String {
        guard let v = string(name) else { throw CLIError.missingRequired(option: name, command: command.name) }
        return v
    }

    public func int(_ name: String, in range: ClosedRange<Int>? = nil) throws -> Int? {
        guard let s = string(name) else { return nil }
        guard let v = Int(s.replacingUnderscores()) else { throw CLIError.badValue(option: name, value: s, expected: "an integer") }
        if let range, !range.contains(v) {
            throw CLIError.badValue(option: name, value: s, expected: "an integer in \(range.lowerBound)...\(range.upperBound)")
        }
        return v
    }

    public func double(_ name: String, in range: ClosedRange<Double>? = nil) throws -> Double? {
        guard let s = string(name) else { return nil }
        guard let v = Double(s), v.isFinite else { throw CLIError.badValue(option: name, value: s, expected: "a finite number") }
        if let range, !range.contains(v) {
            throw CLIError.badValue(option: name, value: s, expected: "a number in [\(range.lowerBound), \(range.upperBound)]")
        }
        return v
    }

    public func argument(_ index: Int) -> String? { index < positionals.count ? positionals[index] : nil }
}

/// The whole command line: the table of commands, `--help`, `--version`, and dispatch.
public struct CommandLineInterface: Sendable {
    public let commands: [CommandSpec]
    public let version: String

    public init(commands: [CommandSpec], version: String) { self.commands = commands; self.version = version }

    public var help: String {
        var lines = ["hgdpo \(version): HG-DPO (Diffusion-DPO with AI feedback and statistic matching) for Stable Diffusion",
                     "U-Nets with LoRA, on CPUs, data-parallel over MPI ranks.",
                     "",
                     "Usage: hgdpo <command> [arguments] [options]",
                     "",
                     "Commands:"]
        let w = commands.map(\.name.count).max() ?? 0
        for c in commands { lines.append("  " + c.name.padding(w) + "  " + c.summary) }
        lines.append("")
        lines.append("Run 'hgdpo <command> --help' for a command's arguments and options.")
        return lines.joined(separator: "\n")
    }

    public enum Resolution { case help(String), version(String), run(CommandSpec, ParsedArguments) }

    /// Finds the command (longest match of words) and parses its arguments.
    public func resolve(_ args: [String]) throws -> Resolution {
        if args.isEmpty || args == ["help"] || args.first == "--help" || args.first == "-h" { return .help(help) }
        if args.first == "--version" || args == ["version"] { return .version("hgdpo \(version)") }
        let match = commands.filter { args.starts(with: $0.words) }.max { $0.words.count < $1.words.count }
        guard let command = match else {
            // A group word alone (e.g. `hgdpo probe`) lists its commands.
            let group = commands.filter { $0.words.count > 1 && $0.words.first == args.first }
            if !group.isEmpty, args.count == 1 || args.dropFirst().first?.hasPrefix("-") == true {
                let w = group.map(\.name.count).max() ?? 0
                return .help((["Commands under '\(args[0])':"] + group.map { "  " + $0.name.padding(w) + "  " + $0.summary }
                              + ["", "Run 'hgdpo <command> --help' for a command's arguments and options."]).joined(separator: "\n"))
            }
            let typed = group.isEmpty ? args[0] : args.prefix(2).joined(separator: " ")
            throw CLIError.unknownCommand(typed, suggestion: closestMatch(typed, among: commands.map(\.name) + commands.map { $0.words[0] }))
        }
        let rest = Array(args.dropFirst(command.words.count))
        if rest.contains("--help") || rest.contains("-h") { return .help(command.help) }
        return .run(command, try command.parse(rest))
    }
}

// MARK: - Helpers

extension String {
    func padding(_ width: Int) -> String { count >= width ? self : self + String(repeating: " ", count: width - count) }
    func replacingUnderscores() -> String { String(filter { $0 != "_" }) }
}

