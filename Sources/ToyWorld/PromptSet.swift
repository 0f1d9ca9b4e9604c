// Seeded prompt sets and defect draws for the world's commands.
import Tensors

public enum PromptSet {
    /// `count` prompts of the split: its descriptions in a seeded order (a new shuffle for every pass), so each one
    /// comes once before any comes twice.
    public static func prompts(count: Int, split: PromptSplit, seed: UInt64) -> [String] {
        let pool = Description.all.filter { split.contains($0) }
        var out: [String] = []
        var pass: UInt64 = 0
        while out.count < count {
            var draw = Draws(CounterRNG(seed: seed, stream: 0x746F_7970_726F_6D70).substream(pass))   // "toypromp"
            var order = Array(pool.indices)
            for i in stride(from: order.count - 1, to: 0, by: -1) { order.swapAt(i, draw.below(i + 1)) }   // Fisher–Yates
            out += order.prefix(count - out.count).map { pool[$0].prompt }
            pass += 1
        }
        return out
    }

    /// The defect of an image of seed `seed`: `fixed`, or a random kind when `random`, in a fraction `rate` of the
    /// images (decided by the seed alone).
    public static func defect(_ fixed: Defect?, random: Bool, rate: Double, seed: UInt64) -> Defect? {
        var draw = Draws(CounterRNG(seed: seed, stream: 0x746F_7964_7261_7465))   // "toydrate"
        guard Double(draw.uniform()) < rate else { return nil }
        return random ? Defect.allCases[draw.below(Defect.allCases.count)] : fixed
    }
}
