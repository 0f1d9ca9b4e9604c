// Data commands: `hgdpo data check` validates a triplet dataset (what users bring or the dataset builder writes);
// `hgdpo make-cache` writes a latent cache of random latents for trying the trainer without a VAE or data.
import Datasets
import Foundation
import IO
import Tensors

extension Commands {
    static let dataCheck = CommandSpec(
        ["data", "check"],
        summary: "Validate a triplet dataset (triplets.jsonl + PNGs): every bad line reported with its line number and id",
        details: "Example: hgdpo data check my_triplets --check-images",
        arguments: [ArgumentSpec("DIR", "folder with triplets.jsonl and the images it names")],
        options: [
            .flag("--check-images", "Decode every PNG (slower), not just check that it exists"),
            .flag("--skip-bad", "Report bad lines and count them instead of failing"),
        ]
    ) { args in
        let ds = try TripletDataset.open(folder: args.positionals[0], skipBad: args.flag("--skip-bad"),
                                         checkImages: args.flag("--check-images"))
        for p in ds.skipped { fputs("skipped: \(p)\n", stderr) }
        print(JSONValue.object([("triplets", .int(ds.count)), ("skipped", .int(ds.skipped.count))]).serialized())
    }

    static let makeCache = CommandSpec(
        ["make-cache"],
        summary: "Write a latent cache of random latents and prompt embeddings (for trying the trainer; real caches come from encoding a dataset)",
        details: "Example: hgdpo make-cache --count 64 --latent 4,8,8 --context 77,32 --out cache",
        options: [
            .value("--out", "DIR", "Cache folder to create (must not exist)", required: true),
            .value("--count", "N", "Triplets", default: "64"),
            .value("--latent", "C,H,W", "Latent shape", default: "4,8,8"),
            .value("--context", "S,D", "Prompt-embedding shape (D = the U-Net's cross_attention_dim)", default: "77,768"),
            .value("--seed", "S", "Seed", default: "0"),
            .value("--dtype", "T", "Storage dtype", default: "F16", choices: ["F16", "F32"]),
        ]
    ) { args in
        let out = try args.requiredString("--out")
        guard !FileManager.default.fileExists(atPath: out) else { throw CLIError.invalid("\(out): already exists; choose a new folder") }
        func dims(_ name: String, _ k: Int) throws -> [Int] {
            let s = args.string(name)!
            let d = s.split(separator: ",").compactMap { Int($0) }
            guard d.count == k, d.allSatisfy({ $0 > 0 }) else {
                throw CLIError.badValue(option: name, value: s, expected: "\(k) positive integers separated by commas")
            }
            return d
        }
        let latent = try dims("--latent", 3), context = try dims("--context", 2)
        let count = try args.int("--count", in: 1...100_000_000)!
        guard let seed = UInt64(args.string("--seed")!) else {
            throw CLIError.badValue(option: "--seed", value: args.string("--seed")!, expected: "a non-negative integer")
        }
        let w = try LatentCacheWriter(folder: out, latentShape: latent, contextShape: context,
                                      dtype: args.string("--dtype") == "F32" ? .F32 : .F16,
                                      source: .object([("generator", "hgdpo make-cache"), ("seed", .string(String(seed)))]))
        let rng = CounterRNG(seed: seed)
        let n = latent.reduce(1, *), m = context.reduce(1, *)
        for i in 0..<count {
            // Winners and losers differ by a shared offset per channel, so a model has something to learn.
            let base = rng.substream(1, UInt64(i)).normals(n)
            let loser = zip(base, rng.substream(2, UInt64(i)).normals(n)).map { $0 + 0.5 * $1 }
            try w.append(id: "random-\(i)", winner: base, loser: loser, context: rng.substream(3, UInt64(i)).normals(m))
        }
        try w.finish()
        print(JSONValue.object([("out", .string(out)), ("count", .int(count))]).serialized())
    }
}
