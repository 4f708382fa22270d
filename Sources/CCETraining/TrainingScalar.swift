// The scalar types the model runs in: Float32 for training, Float64 for the
// finite-difference tests. Matrix products go to OpenBLAS (sgemm / dgemm).

import COpenBLAS
import Foundation

/// A floating-point type with an OpenBLAS matrix product.
public protocol TrainingScalar: BinaryFloatingPoint, Sendable {
    /// C (m x n) = alpha · op(A) · op(B) + beta · C, row-major; op(A) is m x k, op(B) k x n.
    static func gemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Self,
                     a: UnsafePointer<Self>, lda: Int, b: UnsafePointer<Self>, ldb: Int,
                     beta: Self, c: UnsafeMutablePointer<Self>, ldc: Int)
    static func tanh(_ x: Self) -> Self
}

extension Float: TrainingScalar {
    public static func gemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
                            a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                            beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
        guard m > 0, n > 0 else { return }
        cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
                    Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }
    public static func tanh(_ x: Float) -> Float { Foundation.tanhf(x) }
}

extension Double: TrainingScalar {
    public static func gemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Double,
                            a: UnsafePointer<Double>, lda: Int, b: UnsafePointer<Double>, ldb: Int,
                            beta: Double, c: UnsafeMutablePointer<Double>, ldc: Int) {
        guard m > 0, n > 0 else { return }
        cblas_dgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
                    Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }
    public static func tanh(_ x: Double) -> Double { Foundation.tanh(x) }
}

/// C = alpha · op(A) · op(B) + beta · C on Swift arrays (row-major, leading dimensions
/// from the shapes).
@inline(__always)
func gemm<T: TrainingScalar>(_ a: [T], transA: Bool = false, _ b: [T], transB: Bool = false,
                             into c: inout [T], m: Int, n: Int, k: Int, alpha: T = 1, beta: T = 0) {
    a.withUnsafeBufferPointer { ap in
        b.withUnsafeBufferPointer { bp in
            c.withUnsafeMutableBufferPointer { cp in
                T.gemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha,
                       a: ap.baseAddress!, lda: transA ? m : k, b: bp.baseAddress!, ldb: transB ? k : n,
                       beta: beta, c: cp.baseAddress!, ldc: n)
            }
        }
    }
}
