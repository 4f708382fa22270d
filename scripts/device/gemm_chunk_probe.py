"""What rate cuBLAS (through PyTorch) gives the dense backward's chunk GEMMs on this GPU.

The dense path (cuda/kernels/dense_products.cu) runs, per vocabulary chunk of K columns,
dE[N x D] += Z[N x K] · C_chunk[K x D] (f32 accumulator) and dC_chunk[K x D] = Zᵀ · E[N x D].
This times both GEMM shapes at several K, as one chunk alone and as a whole sweep of V / K
chunks back to back (the sustained rate, clocks included), beside the one big logits GEMM
E · Cᵀ that a materializing implementation runs. Measurement only; prints TFLOP/s.
"""
import sys
import torch

def timed(fn, reps):
    fn()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(reps):
        fn()
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) / reps  # ms

def has_out_dtype():
    x = torch.zeros(16, 16, device="cuda", dtype=torch.bfloat16)
    try:
        torch.mm(x, x, out_dtype=torch.float32)
        return True
    except Exception:
        return False

def main():
    dev = torch.device("cuda")
    torch.manual_seed(0)
    f32out = has_out_dtype()
    print(torch.cuda.get_device_name(), "torch", torch.__version__, "mm out_dtype f32:", f32out)
    for N, D, V in [(8192, 4096, 128256), (8192, 2304, 256000)]:
        E = torch.randn(N, D, device=dev, dtype=torch.bfloat16)
        C = torch.randn(V, D, device=dev, dtype=torch.bfloat16)
        big = timed(lambda: E @ C.t(), 5)
        print(f"N {N} D {D} V {V}: logits E·Cᵀ {big:.2f} ms = {2*N*D*V/big/1e9:.0f} TFLOP/s")
        for K in [D // 2, D, 2 * D, 4 * D]:
            Z = torch.randn(N, K, device=dev, dtype=torch.bfloat16)
            Cc = C[:K]
            acc = torch.zeros(N, D, device=dev, dtype=torch.float32)
            fl = 2 * N * K * D
            dE_one = lambda: torch.mm(Z, Cc)
            dE_f32 = lambda: torch.mm(Z, Cc, out_dtype=torch.float32)
            dC_one = lambda: torch.mm(Z.t(), E)
            tE, tC = timed(dE_one, 20), timed(dC_one, 20)
            tF = timed(dE_f32, 20) if f32out else float("nan")
            chunks = (V + K - 1) // K
            def sweep():
                for _ in range(chunks):
                    dE_one(); dC_one()
            ts = timed(sweep, 2)
            print(f"  K {K:6d}: dE {tE:.3f} ms {fl/tE/1e9:4.0f} TFLOP/s (bf16 out; f32 out {fl/tF/1e9:4.0f})"
                  f" | dC {tC:.3f} ms {fl/tC/1e9:4.0f} | sweep of {chunks} chunks {ts:.2f} ms = {2*fl*chunks/ts/1e9:.0f} TFLOP/s")
        del E, C
        torch.cuda.empty_cache()

if __name__ == "__main__":
    sys.exit(main())
