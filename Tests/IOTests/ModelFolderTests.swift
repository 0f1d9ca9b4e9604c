import Foundation
import XCTest
import TestSupport
@testable import IO

final class ModelFolderTests: XCTestCase {
    // The U-Net config of Stable Diffusion 1.5 as diffusers ships it (older diffusers version: fewer keys).
    static let sd15UNet = """
    {"_class_name": "UNet2DConditionModel", "_diffusers_version": "0.6.0", "act_fn": "silu", "attention_head_dim": 8,
     "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": false, "cross_attention_dim": 768,
     "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
     "downsample_padding": 1, "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
     "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
     "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
     "some_future_key": {"nested": [1, 2]}}
    """
    // SD 2.1's: linear projections, per-block head sizes.
    static let sd21UNet = """
    {"_class_name": "UNet2DConditionModel", "attention_head_dim": [5, 10, 20, 20], "block_out_channels": [320, 640, 1280, 1280],
     "cross_attention_dim": 1024, "use_linear_projection": true, "upcast_attention": true, "num_attention_heads": null,
     "mid_block_type": "UNetMidBlock2DCrossAttn", "norm_num_groups": 32, "class_embed_type": null}
    """

    func write(_ text: String, _ path: String) throws {
        try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try text.write(toFile: path, atomically: true, encoding: .utf8)
    }

    func testDecodesDiffusersUNetConfigsLeniently() throws {
        let sd15 = try JSONDecoder().decode(UNet2DConditionConfig.self, from: Data(Self.sd15UNet.utf8))
        XCTAssertEqual(sd15.blockOutChannels, [320, 640, 1280, 1280])
        XCTAssertEqual(sd15.crossAttentionDim, .one(768))
        XCTAssertEqual(sd15.headsPerBlock, [8, 8, 8, 8])   // SD 1.x: "attention_head_dim" is the number of heads
        XCTAssertEqual(sd15.layersPerBlock.perBlock(4), [2, 2, 2, 2])
        XCTAssertFalse(sd15.useLinearProjection)
        XCTAssertEqual(sd15.midBlockType, "UNetMidBlock2DCrossAttn")   // default when the key is absent
        XCTAssertEqual(sd15.normEps, 1e-5)
        let sd21 = try JSONDecoder().decode(UNet2DConditionConfig.self, from: Data(Self.sd21UNet.utf8))
        XCTAssertEqual(sd21.attentionHeadDim, .list([5, 10, 20, 20]))
        XCTAssertNil(sd21.numAttentionHeads)
        XCTAssertTrue(sd21.useLinearProjection)
        XCTAssertEqual(sd21.crossAttentionDim, .one(1024))
        XCTAssertNil(IntOrList.list([1, 2]).perBlock(4))
    }

    func testDecodesOtherComponentConfigs() throws {
        let sched = try JSONDecoder().decode(SchedulerConfig.self, from: Data("""
            {"_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
             "num_train_timesteps": 1000, "set_alpha_to_one": false, "skip_prk_steps": true, "steps_offset": 1,
             "trained_betas": null, "clip_sample": false}
            """.utf8))
        XCTAssertEqual(sched.className, "PNDMScheduler")
        XCTAssertEqual(sched.betaSchedule, "scaled_linear")
        XCTAssertEqual(sched.predictionType, "epsilon")
        XCTAssertEqual(sched.stepsOffset, 1)
        let vae = try JSONDecoder().decode(AutoencoderKLConfig.self, from: Data("""
            {"_class_name": "AutoencoderKL", "block_out_channels": [128, 256, 512, 512], "latent_channels": 4, "sample_size": 512}
            """.utf8))
        XCTAssertEqual(vae.scalingFactor, 0.18215)
        XCTAssertEqual(vae.blockOutChannels.count, 4)
        let clip = try JSONDecoder().decode(CLIPTextConfig.self, from: Data("""
            {"architectures": ["CLIPTextModel"], "hidden_size": 768, "num_attention_heads": 12, "bos_token_id": 0, "eos_token_id": 2}
            """.utf8))
        XCTAssertEqual(clip.hiddenSize, 768)
        XCTAssertEqual(clip.hiddenAct, "quick_gelu")
        let tok = try JSONDecoder().decode(TokenizerConfig.self, from: Data("""
            {"model_max_length": 77, "bos_token": {"content": "<|startoftext|>", "lstrip": false}, "pad_token": "<|endoftext|>"}
            """.utf8))
        XCTAssertEqual(tok.bosToken, "<|startoftext|>")
        XCTAssertEqual(tok.modelMaxLength, 77)
    }

    func testConfigErrorsNameFileAndKey() throws {
        let dir = try temporaryDirectory(self)
        let path = (dir as NSString).appendingPathComponent("config.json")
        try write(#"{"block_out_channels": [320, "wide"]}"#, path)
        XCTAssertThrowsError(try decodeConfig(UNet2DConditionConfig.self, from: path)) { e in
            let msg = "\(e)"
            XCTAssertTrue(msg.contains(path) && msg.contains("block_out_channels"), msg)
        }
        try write("{not json", path)
        XCTAssertThrowsError(try decodeConfig(UNet2DConditionConfig.self, from: path)) { e in
            XCTAssertTrue("\(e)".contains("not valid JSON"), "\(e)")
        }
        XCTAssertThrowsError(try decodeConfig(UNet2DConditionConfig.self, from: dir + "/nope.json")) { e in
            XCTAssertEqual(e as? ModelFolderError, .missingFile(dir + "/nope.json", what: "config file"))
        }
    }

    func testPipelineLayoutAndWeightVariants() throws {
        let root = try temporaryDirectory(self)
        try write("""
            {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
             "vae": ["diffusers", "AutoencoderKL"], "scheduler": ["diffusers", "PNDMScheduler"],
             "safety_checker": [null, null], "requires_safety_checker": false}
            """, root + "/model_index.json")
        try write(Self.sd15UNet, root + "/unet/config.json")
        try write("x", root + "/unet/diffusion_pytorch_model.safetensors")
        try write("x", root + "/unet/diffusion_pytorch_model.fp16.safetensors")
        try write(#"{"_class_name": "PNDMScheduler"}"#, root + "/scheduler/scheduler_config.json")
        let model = try ModelFolder(path: root)
        XCTAssertTrue(model.isPipeline)
        XCTAssertEqual(model.components["unet"]?.className, "UNet2DConditionModel")
        XCTAssertNil(model.components["safety_checker"])
        let unet = try model.unet()
        XCTAssertEqual(try unet.config(UNet2DConditionConfig.self).crossAttentionDim, .one(768))
        XCTAssertEqual(try unet.weightFiles(), [root + "/unet/diffusion_pytorch_model.safetensors"])
        XCTAssertEqual(try unet.weightFiles(variant: "fp16"), [root + "/unet/diffusion_pytorch_model.fp16.safetensors"])
        XCTAssertThrowsError(try unet.weightFiles(variant: "bf16")) { e in
            XCTAssertTrue("\(e)".contains("variant 'bf16'") && "\(e)".contains("diffusion_pytorch_model.fp16.safetensors"), "\(e)")
        }
        XCTAssertEqual(try model.scheduler().config(SchedulerConfig.self).className, "PNDMScheduler")
        // A listed component whose folder is missing, and one not listed at all.
        XCTAssertThrowsError(try model.vae()) { e in XCTAssertTrue("\(e)".contains(root + "/vae/config.json"), "\(e)") }
        XCTAssertThrowsError(try model.textEncoder()) { e in
            XCTAssertTrue("\(e)".contains("text_encoder") && "\(e)".contains("scheduler, unet, vae"), "\(e)")
        }
        // The U-Net folder given directly.
        let direct = try ModelFolder(path: root + "/unet")
        XCTAssertFalse(direct.isPipeline)
        XCTAssertEqual(try direct.unet().path, root + "/unet")
        XCTAssertThrowsError(try direct.vae()) { e in XCTAssertTrue("\(e)".contains("expected AutoencoderKL"), "\(e)") }
    }

    func testWeightFileResolution() throws {
        let dir = try temporaryDirectory(self)
        try write(#"{"_class_name": "UNet2DConditionModel"}"#, dir + "/config.json")
        let folder = ComponentFolder(path: dir)
        XCTAssertThrowsError(try folder.weightFiles()) { e in XCTAssertTrue("\(e)".contains("no safetensors weights"), "\(e)") }
        try write("x", dir + "/diffusion_pytorch_model.bin")
        XCTAssertThrowsError(try folder.weightFiles()) { e in XCTAssertTrue("\(e)".contains("pickle"), "\(e)") }
        // Only a variant present: used when no variant is asked for.
        try write("x", dir + "/diffusion_pytorch_model.fp16.safetensors")
        XCTAssertEqual(try folder.weightFiles(), [dir + "/diffusion_pytorch_model.fp16.safetensors"])
        // Sharded: the index names the shards, which must all exist.
        try write("x", dir + "/diffusion_pytorch_model-00001-of-00002.safetensors")
        try write(#"{"metadata": {}, "weight_map": {"a": "diffusion_pytorch_model-00001-of-00002.safetensors", "b": "diffusion_pytorch_model-00002-of-00002.safetensors"}}"#,
                  dir + "/diffusion_pytorch_model.safetensors.index.json")
        XCTAssertThrowsError(try folder.weightFiles()) { e in XCTAssertTrue("\(e)".contains("00002-of-00002") && "\(e)".contains("missing"), "\(e)") }
        try write("x", dir + "/diffusion_pytorch_model-00002-of-00002.safetensors")
        XCTAssertEqual(try folder.weightFiles(), [dir + "/diffusion_pytorch_model-00001-of-00002.safetensors",
                                                  dir + "/diffusion_pytorch_model-00002-of-00002.safetensors"])
        XCTAssertThrowsError(try ModelFolder(path: dir + "/missing")) { e in XCTAssertTrue("\(e)".contains("missing"), "\(e)") }
    }
}
