// `hgdpo world …`: the toy human world (Sources/ToyWorld, docs/toyworld.md), where every step of the paper runs in
// minutes: prompts from its grammar, rendered images (with the defects of generated humans on request), a rendered
// SFT dataset as a triplet folder, the toy scorer's accuracy, and the toy target pipeline (world make-model).
import Datasets
import Foundation
import IO
import Sampling
import Tensors
import TextEncoder
import ToyWorld
import UNet

extension Commands {
    static func parseSeed(_ args: ParsedArguments, _ name: String = "--seed") throws -> UInt64 {
        guard let seed = UInt64(args.string(name)!) else {
            throw CLIError.badValue(option: name, value: args.string(name)!, expected: "a non-negative integer")
        }
        return seed
    }

    /// A folder to fill: refused when it exists and is not empty.
    static func newFolder(_ path: String) throws {
        let fm = FileManager.default
        var isDir: ObjCBool = false
        if fm.fileExists(atPath: path, isDirectory: &isDir) {
            guard isDir.boolValue, (try? fm.contentsOfDirectory(atPath: path))?.isEmpty == true else {
                throw CLIError.invalid("\(path): already exists and is not an empty folder; choose a new folder")
            }
        }
        try fm.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    static func worldSize(_ args: ParsedArguments) throws -> Int {
        let size = try args.int("--size", in: 16...512)!
        guard size % 8 == 0 else { throw CLIError.badValue(option: "--size", value: String(size), expected: "a multiple of 8") }
        return size
    }

    static func parseDescription(_ prompt: String, source: String) throws -> Description {
        do { return try Description(parsing: prompt) } catch let e as ToyPromptError { throw CLIError.invalid("\(source): \(e)") }
    }

    static let worldPrompts = CommandSpec(
        ["world", "prompts"],
        summary: "Write prompts of the toy world's grammar, one per line (train or held-out split)",
        details: """
            Example: hgdpo world prompts --count 64 --split train --out prompts.txt
            The 420 descriptions (1-3 people x 7 shirt colors x 4 poses x 5 backgrounds) are split by a hash of the
            prompt: a fifth are held out (never in --split train), for evaluation on unseen combinations. The prompts
            go through the split's descriptions in a seeded order, each once before any repeats.
            """,
        options: [
            .value("--count", "N", "Prompts", default: "64"),
            .value("--split", "NAME", "Which descriptions", default: "train", choices: PromptSplit.allCases.map(\.rawValue)),
            .value("--seed", "S", "Seed of the order", default: "0"),
            .value("--out", "FILE", "Prompt file to write (default: standard output)"),
        ]
    ) { args in
        let count = try args.int("--count", in: 1...10_000_000)!
        let split = PromptSplit(rawValue: args.string("--split")!)!
        let prompts = PromptSet.prompts(count: count, split: split, seed: try parseSeed(args))
        let text = prompts.joined(separator: "\n") + "\n"
        if let out = args.string("--out") {
            guard !FileManager.default.fileExists(atPath: out) else { throw CLIError.invalid("\(out): already exists; choose a new file") }
            do { try Foundation.Data(text.utf8).write(to: URL(fileURLWithPath: out)) } catch {
                throw CLIError.invalid("\(out): cannot write: \(error.localizedDescription)")
            }
        } else {
            print(text, terminator: "")
        }
    }

    static let worldRender = CommandSpec(
        ["world", "render"],
        summary: "Render toy-world images of prompts (correct, or with a chosen defect) into a folder of PNGs",
        details: """
            Example: hgdpo world render --prompt "a person in a red shirt waving on a green field" --images-per-prompt 8 --out renders
            Image k (prompt-major) is OUT/kkkkkk-seedS.png, S = --seed + k, with the prompt, seed and defect in its PNG
            text chunks, and OUT/grid.png. Defects: \(Defect.allCases.map(\.rawValue).joined(separator: ", ")).
            --defect random gives each image a random one; --defect-rate P only a fraction P of the images.
            """,
        options: [
            .value("--prompt", "TEXT", "One prompt of the toy grammar"),
            .value("--prompts", "FILE", "Prompts, one per line"),
            .value("--images-per-prompt", "K", "Images per prompt", default: "1"),
            .value("--seed", "S", "Seed of the first image", default: "0"),
            .value("--defect", "KIND", "none, random or one defect kind", default: "none",
                   choices: ["none", "random"] + Defect.allCases.map(\.rawValue)),
            .value("--defect-rate", "P", "Fraction of images given the defect (with --defect)", default: "1"),
            .value("--size", "PX", "Image width and height", default: "32"),
            .value("--out", "DIR", "Folder to create (or an empty one)", required: true),
        ]
    ) { args in
        let prompts: [(String, String)]   // (prompt, where it came from)
        switch (args.string("--prompt"), args.string("--prompts")) {
        case (let p?, nil): prompts = [(p, "--prompt")]
        case (nil, let file?):
            prompts = try readPromptLines(file).enumerated().filter { !$0.element.trimmingCharacters(in: .whitespaces).isEmpty }
                .map { ($0.element, "\(file):\($0.offset + 1)") }
            guard !prompts.isEmpty else { throw CLIError.invalid("\(file): no prompts (only blank lines)") }
        case (.some, .some): throw CLIError.invalid("give either --prompt or --prompts, not both")
        case (nil, nil): throw CLIError.invalid("'hgdpo world render' needs --prompt TEXT or --prompts FILE")
        }
        let descriptions = try prompts.map { try parseDescription($0.0, source: $0.1) }
        let perPrompt = try args.int("--images-per-prompt", in: 1...100_000)!
        let seed = try parseSeed(args), size = try worldSize(args)
        let rate = try args.double("--defect-rate", in: 0...1)!
        let defectChoice = args.string("--defect")!
        if args.given("--defect-rate") && defectChoice == "none" { throw CLIError.invalid("--defect-rate needs --defect") }
        let out = try args.requiredString("--out")
        try newFolder(out)
        var images: [ByteImage] = []
        for (p, d) in descriptions.enumerated() {
            for j in 0..<perPrompt {
                let k = p * perPrompt + j, s = seed &+ UInt64(k)
                let defect = PromptSet.defect(defectChoice == "none" ? nil : Defect(rawValue: defectChoice),
                                              random: defectChoice == "random", rate: rate, seed: s)
                let image = Scene(d, seed: s, defect: defect, width: size, height: size).render()
                try PNG.writeBytes(image, to: (out as NSString).appendingPathComponent(String(format: "%06d-seed\(s).png", k)),
                                   text: [("prompt", d.prompt), ("seed", String(s)), ("defect", defect?.rawValue ?? "none"),
                                          ("software", "hgdpo world render")])
                if images.count < 64 { images.append(image) }
            }
        }
        try PNG.writeBytes(imageGrid(images), to: (out as NSString).appendingPathComponent("grid.png"), text: [("hgdpo_grid", "1")])
        print(JSONValue.object([("out", .string(out)), ("written", .int(descriptions.count * perPrompt)),
                                ("grid", .string((out as NSString).appendingPathComponent("grid.png")))]).serialized())
    }

    static let worldDataset = CommandSpec(
        ["world", "dataset"],
        summary: "Write a rendered toy-world triplet dataset (SFT data with a share of defective images)",
        details: """
            Example: hgdpo world dataset --count 2048 --defect-rate 0.3 --out data/sft
            Each line of triplets.jsonl: the winner is the SFT image (a render of the prompt, defective with probability
            --defect-rate, as web data is imperfect), the loser a render of the same prompt with a random defect
            (so --defect-rate 0 gives ground-truth preference pairs). `hgdpo train --objective sft` reads only winners.
            Extra fields winner_defect / loser_defect name the defects ("none").
            """,
        options: [
            .value("--count", "N", "Triplets", default: "1024"),
            .value("--split", "NAME", "Prompts from which descriptions", default: "train", choices: PromptSplit.allCases.map(\.rawValue)),
            .value("--defect-rate", "P", "Fraction of defective winners", default: "0.3"),
            .value("--seed", "S", "Seed", default: "0"),
            .value("--size", "PX", "Image width and height", default: "32"),
            .value("--out", "DIR", "Dataset folder to create (or an empty one)", required: true),
            .value("--threads", "N", "Threads (default: HGDPO_THREADS or all cores)"),
        ]
    ) { args in
        try applyThreads(args)
        let count = try args.int("--count", in: 1...10_000_000)!
        let split = PromptSplit(rawValue: args.string("--split")!)!
        let rate = try args.double("--defect-rate", in: 0...1)!
        let seed = try parseSeed(args), size = try worldSize(args)
        let out = try args.requiredString("--out")
        try newFolder(out)
        try FileManager.default.createDirectory(atPath: (out as NSString).appendingPathComponent("images"), withIntermediateDirectories: true)
        let prompts = PromptSet.prompts(count: count, split: split, seed: seed)
        // Triplet i: scene seed s_i; the winner's defect (rate) and the loser's (always) from s_i. Rendered and
        // written on all threads (the PNG writes, each fsync'ed, are most of the time).
        let plan = try prompts.enumerated().map { i, prompt in
            let s = seed &* 1_000_003 &+ UInt64(i)
            return (id: String(format: "%06d", i), prompt: prompt, description: try Description(parsing: prompt), seed: s,
                    winner: PromptSet.defect(nil, random: true, rate: rate, seed: s),
                    loser: PromptSet.defect(nil, random: true, rate: 1, seed: s &+ 0x5DEE_CE66)!)
        }
        var failures = [String?](repeating: nil, count: plan.count)
        failures.withUnsafeMutableBufferPointer { failed in
            let failed = failed
            parallelFor(plan.count) { i in
                let t = plan[i]
                for (role, defect) in [("w", t.winner), ("l", Optional(t.loser))] {
                    do {
                        try PNG.writeBytes(Scene(t.description, seed: t.seed, defect: defect, width: size, height: size).render(),
                                           to: (out as NSString).appendingPathComponent("images/\(t.id)\(role).png"),
                                           text: [("prompt", t.prompt), ("seed", String(t.seed)), ("defect", defect?.rawValue ?? "none")])
                    } catch {
                        failed[i] = "\(error)"
                        return
                    }
                }
            }
        }
        if let failure = failures.compactMap({ $0 }).first { throw CLIError.invalid("\(out): \(failure)") }
        let lines = plan.map { t in
            Triplet(id: t.id, prompt: t.prompt, winner: "images/\(t.id)w.png", loser: "images/\(t.id)l.png", extraFields: [
                "winner_defect": JSONValue.string(t.winner?.rawValue ?? "none").serialized(),
                "loser_defect": JSONValue.string(t.loser.rawValue).serialized(),
            ]).jsonLine()
        }
        let defective = plan.filter { $0.winner != nil }.count
        try Foundation.Data((lines.joined(separator: "\n") + "\n").utf8)
            .write(to: URL(fileURLWithPath: (out as NSString).appendingPathComponent("triplets.jsonl")), options: .atomic)
        print(JSONValue.object([("out", .string(out)), ("triplets", .int(count)), ("defective_winners", .int(defective))]).serialized())
    }

    static let worldCheckScorer = CommandSpec(
        ["world", "check-scorer"],
        summary: "Measure the toy-human scorer on rendered correct-vs-defective pairs, per defect kind",
        details: """
            Example: hgdpo world check-scorer --pairs 1000
            Pair k: a random description, the scene of seed k rendered correctly and with the defect (--independent: the
            defect in another scene of that description, as pools compare); the pair counts as right when the correct
            image scores strictly higher. One JSON line per defect kind, then the total.
            """,
        options: [
            .value("--pairs", "N", "Pairs per defect kind", default: "1000"),
            .value("--seed", "S", "Seed", default: "0"),
            .value("--size", "PX", "Image width and height", default: "32"),
            .flag("--independent", "Compare with the defect in another scene of the same description"),
            .value("--blur", "W", "Blur both images (3x3, neighbours weigh W, the centre 1), as a model's soft samples", default: "0"),
        ]
    ) { args in
        let pairs = try args.int("--pairs", in: 1...1_000_000)!
        let results = ScorerCheck.run(scorer: ToyHumanScorer(name: "toy"), pairs: pairs, seed: try parseSeed(args), size: try worldSize(args),
                                      independent: args.flag("--independent"), blur: Float(try args.double("--blur", in: 0...100)!))
        for r in results {
            print(JSONValue.object([("defect", .string(r.defect.rawValue)), ("pairs", .int(r.pairs)), ("correct", .int(r.correct)),
                                    ("accuracy", .double(r.accuracy))]).serialized())
        }
        let total = results.reduce(0) { $0 + $1.correct }, n = results.reduce(0) { $0 + $1.pairs }
        print(JSONValue.object([("defect", "all"), ("pairs", .int(n)), ("correct", .int(total)),
                                ("accuracy", .double(Double(total) / Double(n)))]).serialized())
    }

    static let worldRead = CommandSpec(
        ["world", "read"],
        summary: "Show what the toy-human scorer reads in images: background, people (shirt, pose, anatomy), fragments, score",
        details: """
            Example: hgdpo world read --prompt "two people in red shirts waving on a beach" --image eval/a/000000-seed1000.png
            One JSON line per image: the background read, each person's shirt color, pose and part readings (head,
            arms and legs, 1 = as a correct figure), the fragments, the clutter (foreground outside every person, a
            fraction of the image) and, with --prompt, the score and its penalties.
            """,
        options: [
            .list("--image", "PNG", "An image to read"),
            .value("--prompt", "TEXT", "The image's prompt (toy grammar): also print the score"),
        ]
    ) { args in
        let images = args.strings("--image")
        guard !images.isEmpty else { throw CLIError.missingRequired(option: "--image", command: "world read") }
        let expected = try args.string("--prompt").map { try Description(parsing: $0) }
        let scorer = ToyHumanScorer(name: "toy")
        for path in images {
            let a = scorer.analyze(try PNG.readBytes(path, channels: 3))
            var fields: [(String, JSONValue)] = [("image", .string(path)), ("background", .string(a.background.rawValue))]
            fields.append(("people", .array(a.people.map { p in
                .object([("shirt", .string(p.color.rawValue)), ("pose", .string(p.pose.rawValue)),
                         ("head", .double(Double(p.head))), ("arms", .array([.double(Double(p.armsLeft)), .double(Double(p.armsRight))])),
                         ("legs", .array([.double(Double(p.legsLeft)), .double(Double(p.legsRight))]))])
            })))
            fields += [("fragments", .int(a.fragments)), ("clutter", .double(Double(a.clutter)))]
            if let expected {
                let parts = scorer.penalties(analysis: a, expected: expected)
                fields.append(("penalties", .object(parts.map { ($0.name, .double(Double($0.value))) })))
                fields.append(("score", .double(scorer.score(analysis: a, expected: expected))))
            }
            print(JSONValue.object(fields).serialized())
        }
    }

    static let worldMakeModel = CommandSpec(
        ["world", "make-model"],
        summary: "Write the toy world's target pipeline: pixel-space U-Net, tiny CLIP text encoder and grammar tokenizer (random weights)",
        details: """
            Example: hgdpo world make-model --out toy-model   (random weights; models/toy is the trained SFT model)
            A diffusers pipeline folder without vae/ (pixel space: the latents are the RGB image in [-1, 1]):
            unet/ (in/out 3 channels, --channels per level, ResNet blocks only except cross-attention at the lowest
            level and in the middle), text_encoder/ (a CLIPTextModel, --text-width wide, frozen random weights as
            transformers initialises them), tokenizer/ (bytes plus one token per grammar word, --max-tokens long) and
            scheduler/ (DDPM, linear betas 1e-4 ... 0.02 over 1000 steps and clip_sample, as pixel-space DDPM: the
            DDPM and DDIM samplers clip the predicted image to [-1, 1] at every step; prediction_type v_prediction by
            default: at high noise the target is then the image itself, so training learns what the prompt says
            (with epsilon, the prompt barely changes the loss and the trained model ignores it: docs/toyworld.md)).
            """,
        options: [
            .value("--out", "DIR", "Folder to create (must not exist)", required: true),
            .value("--seed", "S", "Seed of the weights", default: "0"),
            .value("--size", "PX", "Image size the U-Net is made for (sample_size)", default: "32"),
            .value("--channels", "LIST", "U-Net block_out_channels, comma-separated", default: "16,32,64"),
            .value("--layers", "N", "ResNet layers per block", default: "1"),
            .value("--text-width", "D", "Text encoder width = the U-Net's cross_attention_dim", default: "64"),
            .value("--text-layers", "N", "Text encoder layers", default: "2"),
            .value("--max-tokens", "N", "Tokenizer model_max_length (the longest grammar prompt is 14 tokens)", default: "16"),
            .value("--prediction-type", "TYPE", "What the U-Net predicts (the scheduler's prediction_type)", default: "v_prediction",
                   choices: ["epsilon", "v_prediction"]),
        ]
    ) { args in
        let out = try args.requiredString("--out")
        guard !FileManager.default.fileExists(atPath: out) else { throw CLIError.invalid("\(out): already exists; choose a new folder") }
        let seed = try parseSeed(args), size = try worldSize(args)
        let channelText = args.string("--channels")!
        let channels = channelText.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard !channels.isEmpty, channels.count == channelText.split(separator: ",").count, channels.allSatisfy({ $0 > 0 && $0 % 8 == 0 }) else {
            throw CLIError.badValue(option: "--channels", value: channelText, expected: "comma-separated multiples of 8, e.g. 16,32,64")
        }
        guard size % (1 << (channels.count - 1)) == 0 else {
            throw CLIError.badValue(option: "--size", value: String(size), expected: "a multiple of \(1 << (channels.count - 1)) for \(channels.count) levels")
        }
        let width = try args.int("--text-width", in: 8...4096)!
        guard width % 16 == 0 else { throw CLIError.badValue(option: "--text-width", value: String(width), expected: "a multiple of 16") }
        let vocabulary = ByteLevelVocabulary(words: Description.words, maxLength: try args.int("--max-tokens", in: 14...77)!)

        var unet = UNet2DConditionConfig()
        unet.sampleSize = size
        unet.inChannels = 3; unet.outChannels = 3
        unet.blockOutChannels = channels
        unet.downBlockTypes = Array(repeating: "DownBlock2D", count: channels.count - 1) + ["CrossAttnDownBlock2D"]
        unet.upBlockTypes = ["CrossAttnUpBlock2D"] + Array(repeating: "UpBlock2D", count: channels.count - 1)
        unet.layersPerBlock = .one(try args.int("--layers", in: 1...8)!)
        unet.crossAttentionDim = .one(width)
        unet.attentionHeadDim = .one(channels.last! / 16)   // heads of 16 channels
        unet.normNumGroups = 8
        let model = UNetModel(spec: try UNetSpec(unet))
        model.randomizeWeights(seed: seed)

        var text = CLIPTextConfig()
        text.vocabSize = vocabulary.size
        text.bosTokenId = vocabulary.bosId
        text.eosTokenId = vocabulary.eosId
        text.padTokenId = 1
        text.maxPositionEmbeddings = vocabulary.maxLength
        text.hiddenAct = "quick_gelu"
        text.hiddenSize = width; text.projectionDim = width; text.intermediateSize = 4 * width
        text.numHiddenLayers = try args.int("--text-layers", in: 1...24)!
        text.numAttentionHeads = width / 16
        let encoder = try CLIPTextModel(config: text)
        encoder.initializeAsTransformers(seed: seed &+ 1)
        try writePipeline(model: model, textEncoder: encoder, vocabulary: vocabulary,
                          schedulerOverrides: ["beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02, "clip_sample": true,
                                               "prediction_type": args.string("--prediction-type")!], to: out)
        print(JSONValue.object([("out", .string(out)), ("params", .int(model.weights.table.count)),
                                ("text_encoder_params", .int(encoder.weights.table.count)), ("vocabulary", .int(vocabulary.size))]).serialized())
    }
}
