"""`dit_layer_breakdown.kernel_kind`: GPU kernel names (cuDNN attention and convolutions, cuBLAS GEMMs, XLA fusions,
copies and cache updates) land in the right row of the profile tables."""

import pytest

from benchmarks.dit_layer_breakdown import kernel_kind


@pytest.mark.parametrize("kernel, op, kind", [
    ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7_64x128x128", "custom-call.3", "attention"),
    ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc", "cudnn-conv.5", "convolution"),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64", "cublas-gemm.2", "matmul"),
    ("nvjet_hsh_256x128_64x4_1x2_h_bz_coopA_NTN", "cublas-lt-matmul.1", "matmul"),
    ("loop_dynamic_update_slice_fusion", "dynamic-update-slice-fusion.4", "copy / slice / update"),
    ("loop_copy_fusion_3", "copy-fusion.2", "copy / slice / update"),
    ("input_reduce_fusion_7", "fusion.12", "fusion (elementwise, reductions)"),
    ("loop_multiply_fusion", "fusion.3", "fusion (elementwise, reductions)"),
    ("some_kernel", "custom-call.9", "other"),
])
def test_kernel_kinds(kernel, op, kind):
  assert kernel_kind(kernel, op) == kind
