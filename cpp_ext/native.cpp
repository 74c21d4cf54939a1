// segrt.runtime._native: the C++ twin of segrt/runtime/_reference.py (and of panoptic_fusion.py's fuse_reference).
//
// Every function here has the same name, arguments and results as its NumPy twin, and computes the
// same float32 operations in the same order (built with -ffp-contract=off, no fast-math), so integer
// outputs (label maps, masks, counts, RLE strings, overlays) are bit-identical between the two.
// Arguments are validated in Python (segrt.runtime.kernels) before either twin is called; the checks
// here only guard memory safety. Arrays arrive through the buffer protocol, C-contiguous.
// The GIL is released while a kernel runs; large kernels split their rows across threads.

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

namespace {

// -- buffers ---------------------------------------------------------------------------------------
struct Buf {
    Py_buffer view{};
    bool held = false;
    ~Buf() {
        if (held) PyBuffer_Release(&view);
    }
    bool get(PyObject* obj, bool writable, const char* name) {
        int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
        if (PyObject_GetBuffer(obj, &view, flags) != 0) {
            PyErr_Format(PyExc_TypeError, "%s must be a C-contiguous%s array", name, writable ? " writable" : "");
            return false;
        }
        held = true;
        return true;
    }
    char kind() const {  // 'u' unsigned, 'i' signed, 'f' float, 'b' bool
        const char* f = view.format ? view.format : "B";
        while (*f == '<' || *f == '=' || *f == '@' || *f == '>' || *f == '!') ++f;
        switch (*f) {
            case '?': return 'b';
            case 'B': case 'H': case 'I': case 'L': case 'Q': return 'u';
            case 'b': case 'h': case 'i': case 'l': case 'q': return 'i';
            case 'e': case 'f': case 'd': return 'f';
            default: return '?';
        }
    }
    bool is(char k, Py_ssize_t size) const { return kind() == k && view.itemsize == size; }
    Py_ssize_t dim(int i) const { return view.shape[i]; }
    template <class T> T* ptr() const { return static_cast<T*>(view.buf); }
};

bool check(bool ok, const char* message) {
    if (!ok) PyErr_SetString(PyExc_ValueError, message);
    return ok;
}

// -- threads ---------------------------------------------------------------------------------------
// The calling thread's own cap (0: none). A pipeline's stage threads set 1: the pipeline already keeps
// every core busy with whole stages, so splitting one kernel's rows only adds thread start-ups.
thread_local int thread_limit = 0;

int thread_count() {
    static int n = [] {
        const char* env = std::getenv("SEGRT_NATIVE_THREADS");
        int v = env ? std::atoi(env) : 0;
        if (v <= 0) v = static_cast<int>(std::thread::hardware_concurrency());
        return std::max(1, std::min(v, 16));
    }();
    return thread_limit > 0 ? std::min(n, thread_limit) : n;
}

PyObject* set_thread_limit(PyObject*, PyObject* args) {
    int limit = 0;
    if (!PyArg_ParseTuple(args, "i", &limit)) return nullptr;
    if (!check(limit >= 0, "thread limit must be >= 0 (0: no limit)")) return nullptr;
    int previous = thread_limit;
    thread_limit = limit;
    return PyLong_FromLong(previous);
}

PyObject* kernel_threads(PyObject*, PyObject*) { return PyLong_FromLong(thread_count()); }

// Runs fn(begin, end) over [0, n) in contiguous chunks; threads only when work (a cost estimate in
// element operations) pays for starting them.
template <class F>
void parallel_for(Py_ssize_t n, double work, F fn) {
    int threads = thread_count();
    if (work < 4e5 || n < 2) threads = 1;
    threads = static_cast<int>(std::min<Py_ssize_t>(threads, n));
    if (threads <= 1) {
        fn(Py_ssize_t(0), n);
        return;
    }
    std::vector<std::thread> pool;
    Py_ssize_t step = (n + threads - 1) / threads;
    for (int t = 0; t < threads; ++t) {
        Py_ssize_t b = t * step, e = std::min(n, b + step);
        if (b >= e) break;
        pool.emplace_back([=] { fn(b, e); });
    }
    for (auto& th : pool) th.join();
}

// -- taps: out[i] = sum_k in[idx[i, k]] * w[i, k] ----------------------------------------------------
struct Taps {
    const int32_t* idx;
    const float* w;
    Py_ssize_t n, k;
};

bool get_taps(PyObject* idx_obj, PyObject* w_obj, Buf& idx, Buf& w, Taps& t, Py_ssize_t limit, const char* name) {
    if (!idx.get(idx_obj, false, name) || !w.get(w_obj, false, name)) return false;
    if (!check(idx.is('i', 4) && w.is('f', 4) && idx.view.ndim == 2 && w.view.ndim == 2 &&
                   idx.dim(0) == w.dim(0) && idx.dim(1) == w.dim(1) && idx.dim(1) >= 1,
               "taps must be (n, K) int32 indices and (n, K) float32 weights"))
        return false;
    t = {idx.ptr<int32_t>(), w.ptr<float>(), idx.dim(0), idx.dim(1)};
    for (Py_ssize_t i = 0; i < t.n * t.k; ++i)
        if (t.idx[i] < 0 || t.idx[i] >= limit) return check(false, "tap index out of range");
    return true;
}

template <class T>
inline float as_float(T v) { return static_cast<float>(v); }

// Horizontal pass of one source row into dst[x * C + c] (pixel-major, channels contiguous).
// src is addressed as src[(x) * xs + c * cs] for the row.
template <class T>
void hrow(const T* src, Py_ssize_t xs, Py_ssize_t cs, Py_ssize_t C, const Taps& tx, float* dst) {
    for (Py_ssize_t x = 0; x < tx.n; ++x) {
        const int32_t* ix = tx.idx + x * tx.k;
        const float* wx = tx.w + x * tx.k;
        float* d = dst + x * C;
        for (Py_ssize_t c = 0; c < C; ++c) {
            float acc = as_float(src[ix[0] * xs + c * cs]) * wx[0];
            for (Py_ssize_t k = 1; k < tx.k; ++k) acc += as_float(src[ix[k] * xs + c * cs]) * wx[k];
            d[c] = acc;
        }
    }
}

// For output rows [y0, y1): the source rows they need, horizontally interpolated, pixel-major.
struct RowCache {
    Py_ssize_t lo = 0, hi = -1;
    std::vector<float> data;  // (hi - lo + 1) x W x C
};

template <class T, class RowPtr>
void fill_rows(RowCache& rc, const Taps& ty, Py_ssize_t y0, Py_ssize_t y1, Py_ssize_t C, const Taps& tx,
               Py_ssize_t xs, Py_ssize_t cs, RowPtr row_ptr) {
    Py_ssize_t lo = PY_SSIZE_T_MAX, hi = -1;
    for (Py_ssize_t y = y0; y < y1; ++y)
        for (Py_ssize_t k = 0; k < ty.k; ++k) {
            lo = std::min<Py_ssize_t>(lo, ty.idx[y * ty.k + k]);
            hi = std::max<Py_ssize_t>(hi, ty.idx[y * ty.k + k]);
        }
    rc.lo = lo;
    rc.hi = hi;
    rc.data.assign(static_cast<size_t>((hi - lo + 1) * tx.n * C), 0.0f);
    for (Py_ssize_t r = lo; r <= hi; ++r) hrow<T>(row_ptr(r), xs, cs, C, tx, rc.data.data() + (r - lo) * tx.n * C);
}

// v[c] for output pixel x of output row y (vertical pass), into out[0..C).
inline void vpix(const RowCache& rc, const Taps& ty, Py_ssize_t y, Py_ssize_t x, Py_ssize_t C, Py_ssize_t W,
                 float* out) {
    const int32_t* iy = ty.idx + y * ty.k;
    const float* wy = ty.w + y * ty.k;
    const float* r0 = rc.data.data() + ((iy[0] - rc.lo) * W + x) * C;
    for (Py_ssize_t c = 0; c < C; ++c) out[c] = r0[c] * wy[0];
    for (Py_ssize_t k = 1; k < ty.k; ++k) {
        const float* r = rc.data.data() + ((iy[k] - rc.lo) * W + x) * C;
        for (Py_ssize_t c = 0; c < C; ++c) out[c] += r[c] * wy[k];
    }
}

constexpr Py_ssize_t ROW_BLOCK = 32;

// One tap of weight 1 per output element: a pure gather (a crop, or the identity).
bool is_gather(const Taps& t) {
    if (t.k != 1) return false;
    for (Py_ssize_t i = 0; i < t.n; ++i)
        if (t.w[i] != 1.0f) return false;
    return true;
}

// -- resize_normalize --------------------------------------------------------------------------------
// Rows first (contiguous source rows combined into one float row, vectorisable), then columns; both
// twins use this order. The usual camera case, a downscale, touches each source row at most twice.
template <class T, class O>
void resize_normalize_impl(const T* src, Py_ssize_t Ws, Py_ssize_t C, const Taps& ty, const Taps& tx, const float* a,
                           const float* b, O* out, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t top, Py_ssize_t left) {
    const Py_ssize_t row_len = Ws * C;
    parallel_for(ty.n, double(ty.n) * (row_len * ty.k + tx.n * C * tx.k), [&](Py_ssize_t y0, Py_ssize_t y1) {
        std::vector<float> tmp(row_len);
        for (Py_ssize_t y = y0; y < y1; ++y) {
            const int32_t* iy = ty.idx + y * ty.k;
            const float* wy = ty.w + y * ty.k;
            const T* r0 = src + iy[0] * row_len;
            const float w0 = wy[0];
            for (Py_ssize_t i = 0; i < row_len; ++i) tmp[i] = as_float(r0[i]) * w0;
            for (Py_ssize_t k = 1; k < ty.k; ++k) {
                const T* r = src + iy[k] * row_len;
                const float wk = wy[k];
                for (Py_ssize_t i = 0; i < row_len; ++i) tmp[i] += as_float(r[i]) * wk;
            }
            for (Py_ssize_t c = 0; c < C; ++c) {
                O* o = out + (c * OH + top + y) * OW + left;
                const float ac = a[c], bc = b[c];
                for (Py_ssize_t x = 0; x < tx.n; ++x) {
                    const int32_t* ix = tx.idx + x * tx.k;
                    const float* wx = tx.w + x * tx.k;
                    float v = tmp[ix[0] * C + c] * wx[0];
                    for (Py_ssize_t k = 1; k < tx.k; ++k) v += tmp[ix[k] * C + c] * wx[k];
                    v *= ac;
                    v += bc;
                    o[x] = static_cast<O>(v);
                }
            }
        }
    });
}

PyObject* resize_normalize(PyObject*, PyObject* args) {
    PyObject *src_o, *tyi_o, *tyw_o, *txi_o, *txw_o, *a_o, *b_o, *out_o;
    Py_ssize_t top, left;
    if (!PyArg_ParseTuple(args, "OOOOOOOOnn", &src_o, &tyi_o, &tyw_o, &txi_o, &txw_o, &a_o, &b_o, &out_o, &top, &left))
        return nullptr;
    Buf src, tyi, tyw, txi, txw, a, b, out;
    Taps ty, tx;
    if (!src.get(src_o, false, "image") || !out.get(out_o, true, "out") || !a.get(a_o, false, "a") ||
        !b.get(b_o, false, "b"))
        return nullptr;
    if (!check(src.view.ndim == 3 && out.view.ndim == 3, "image must be (H, W, C) and out (C, H, W)")) return nullptr;
    Py_ssize_t Hs = src.dim(0), Ws = src.dim(1), C = src.dim(2), OH = out.dim(1), OW = out.dim(2);
    if (!get_taps(tyi_o, tyw_o, tyi, tyw, ty, Hs, "row taps") || !get_taps(txi_o, txw_o, txi, txw, tx, Ws, "column taps"))
        return nullptr;
    if (!check(out.dim(0) == C && a.view.len == C * 4 && b.view.len == C * 4 && a.is('f', 4) && b.is('f', 4),
               "channel counts of image, out, a and b differ") ||
        !check(top >= 0 && left >= 0 && top + ty.n <= OH && left + tx.n <= OW, "resized image does not fit in out"))
        return nullptr;
    bool ok = true;
    Py_BEGIN_ALLOW_THREADS
    const float *pa = a.ptr<float>(), *pb = b.ptr<float>();
    if (out.is('f', 4)) {
        float* o = out.ptr<float>();
        if (src.is('u', 1)) resize_normalize_impl(src.ptr<uint8_t>(), Ws, C, ty, tx, pa, pb, o, OH, OW, top, left);
        else if (src.is('u', 2)) resize_normalize_impl(src.ptr<uint16_t>(), Ws, C, ty, tx, pa, pb, o, OH, OW, top, left);
        else if (src.is('f', 4)) resize_normalize_impl(src.ptr<float>(), Ws, C, ty, tx, pa, pb, o, OH, OW, top, left);
        else ok = false;
#ifdef __FLT16_MAX__
    } else if (out.is('f', 2)) {
        _Float16* o = out.ptr<_Float16>();
        if (src.is('u', 1)) resize_normalize_impl(src.ptr<uint8_t>(), Ws, C, ty, tx, pa, pb, o, OH, OW, top, left);
        else if (src.is('u', 2)) resize_normalize_impl(src.ptr<uint16_t>(), Ws, C, ty, tx, pa, pb, o, OH, OW, top, left);
        else if (src.is('f', 4)) resize_normalize_impl(src.ptr<float>(), Ws, C, ty, tx, pa, pb, o, OH, OW, top, left);
        else ok = false;
#endif
    } else {
        ok = false;
    }
    Py_END_ALLOW_THREADS
    if (!check(ok, "image must be uint8, uint16 or float32 and out float32 (or float16)")) return nullptr;
    Py_RETURN_NONE;
}

// -- upsample, upsample_argmax, upsample_threshold -------------------------------------------------------
// scores (C, h, w) float32: the source row r of channel c starts at scores + (c * h + r) * w.
struct Scores {
    Buf buf;
    const float* p = nullptr;
    Py_ssize_t C = 0, h = 0, w = 0;
    bool get(PyObject* o) {
        if (!buf.get(o, false, "scores")) return false;
        if (!check(buf.is('f', 4) && buf.view.ndim == 3, "scores must be (C, h, w) float32")) return false;
        p = buf.ptr<float>();
        C = buf.dim(0), h = buf.dim(1), w = buf.dim(2);
        return true;
    }
};

// The arguments every upsampling kernel starts with: (C, h, w) scores, row taps, column taps.
struct Resample {
    Scores s;
    Buf tyi, tyw, txi, txw;
    Taps ty{}, tx{};
    bool get(PyObject* s_o, PyObject* tyi_o, PyObject* tyw_o, PyObject* txi_o, PyObject* txw_o) {
        return s.get(s_o) && get_taps(tyi_o, tyw_o, tyi, tyw, ty, s.h, "row taps") &&
               get_taps(txi_o, txw_o, txi, txw, tx, s.w, "column taps");
    }
};

// The channel-strided row accessor for (C, h, w) planes: element (x, c) of row r at row + x * 1 + c * (h * w).
template <class F>
void for_blocks(const Scores& s, const Taps& ty, const Taps& tx, Py_ssize_t C, F per_pixel) {
    Py_ssize_t blocks = (ty.n + ROW_BLOCK - 1) / ROW_BLOCK;
    parallel_for(blocks, double(ty.n) * tx.n * C * ty.k, [&](Py_ssize_t b0, Py_ssize_t b1) {
        RowCache rc;
        std::vector<float> v(C);
        for (Py_ssize_t blk = b0; blk < b1; ++blk) {
            Py_ssize_t y0 = blk * ROW_BLOCK, y1 = std::min(ty.n, y0 + ROW_BLOCK);
            fill_rows<float>(rc, ty, y0, y1, C, tx, 1, s.h * s.w, [&](Py_ssize_t r) { return s.p + r * s.w; });
            for (Py_ssize_t y = y0; y < y1; ++y)
                for (Py_ssize_t x = 0; x < tx.n; ++x) {
                    vpix(rc, ty, y, x, C, tx.n, v.data());
                    per_pixel(y, x, v.data());
                }
        }
    });
}

PyObject* upsample(PyObject*, PyObject* args) {
    PyObject *s_o, *tyi_o, *tyw_o, *txi_o, *txw_o, *out_o;
    if (!PyArg_ParseTuple(args, "OOOOOO", &s_o, &tyi_o, &tyw_o, &txi_o, &txw_o, &out_o)) return nullptr;
    Resample rs;
    Buf out;
    if (!rs.get(s_o, tyi_o, tyw_o, txi_o, txw_o) || !out.get(out_o, true, "out")) return nullptr;
    const Scores& s = rs.s;
    const Taps &ty = rs.ty, &tx = rs.tx;
    if (!check(out.is('f', 4) && out.view.ndim == 3 && out.dim(0) == s.C && out.dim(1) == ty.n && out.dim(2) == tx.n,
               "out must be (C, H, W) float32"))
        return nullptr;
    float* o = out.ptr<float>();
    Py_ssize_t C = s.C, H = ty.n, W = tx.n;
    Py_BEGIN_ALLOW_THREADS
    for_blocks(s, ty, tx, C, [&](Py_ssize_t y, Py_ssize_t x, const float* v) {
        for (Py_ssize_t c = 0; c < C; ++c) o[(c * H + y) * W + x] = v[c];
    });
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

PyObject* upsample_argmax(PyObject*, PyObject* args) {
    PyObject *s_o, *tyi_o, *tyw_o, *txi_o, *txw_o, *lab_o, *conf_o;
    if (!PyArg_ParseTuple(args, "OOOOOOO", &s_o, &tyi_o, &tyw_o, &txi_o, &txw_o, &lab_o, &conf_o)) return nullptr;
    Resample rs;
    Buf lab, conf;
    if (!rs.get(s_o, tyi_o, tyw_o, txi_o, txw_o) || !lab.get(lab_o, true, "labels")) return nullptr;
    const Scores& s = rs.s;
    const Taps &ty = rs.ty, &tx = rs.tx;
    Py_ssize_t C = s.C, W = tx.n;
    if (!check(lab.view.ndim == 2 && lab.dim(0) == ty.n && lab.dim(1) == W && (lab.is('u', 1) || lab.is('u', 2)),
               "labels must be (H, W) uint8 or uint16") ||
        !check((lab.view.itemsize == 2 || C <= 256) && C <= 65536, "more than 256 classes need uint16 labels (at most 65536)"))
        return nullptr;
    float* cf = nullptr;
    if (conf_o != Py_None) {
        if (!conf.get(conf_o, true, "confidence")) return nullptr;
        if (!check(conf.is('f', 4) && conf.view.len == lab.view.len / lab.view.itemsize * 4, "confidence must be (H, W) float32"))
            return nullptr;
        cf = conf.ptr<float>();
    }
    bool wide = lab.view.itemsize == 2;
    void* lp = lab.view.buf;
    if (cf == nullptr && is_gather(ty) && is_gather(tx)) {
        // Output at the scores' own resolution (a crop at most): v = s * 1.0f is s, so compare the scores
        // directly, channel by channel over whole rows (contiguous, vectorisable), same first-max rule.
        Py_BEGIN_ALLOW_THREADS
        parallel_for(ty.n, double(ty.n) * W * C, [&](Py_ssize_t y0, Py_ssize_t y1) {
            std::vector<float> best(W);
            std::vector<uint16_t> arg(W);
            bool contiguous = true;  // a column crop: read rows directly, no gather
            for (Py_ssize_t x = 0; x < W; ++x) contiguous = contiguous && tx.idx[x] == tx.idx[0] + x;
            std::vector<float> gathered(contiguous ? 0 : W);
            auto row_of = [&](const float* full) -> const float* {
                if (contiguous) return full + tx.idx[0];
                for (Py_ssize_t x = 0; x < W; ++x) gathered[x] = full[tx.idx[x]];
                return gathered.data();
            };
            for (Py_ssize_t y = y0; y < y1; ++y) {
                const float* plane = s.p + ty.idx[y] * s.w;
                const float* r0 = row_of(plane);
                for (Py_ssize_t x = 0; x < W; ++x) best[x] = r0[x], arg[x] = 0;
                for (Py_ssize_t c = 1; c < C; ++c) {
                    const float* row = row_of(plane + c * s.h * s.w);
                    const uint16_t cc = static_cast<uint16_t>(c);
                    for (Py_ssize_t x = 0; x < W; ++x) {
                        const bool more = row[x] > best[x];
                        best[x] = more ? row[x] : best[x];
                        arg[x] = more ? cc : arg[x];
                    }
                }
                if (wide) std::memcpy(static_cast<uint16_t*>(lp) + y * W, arg.data(), W * sizeof(uint16_t));
                else
                    for (Py_ssize_t x = 0; x < W; ++x) static_cast<uint8_t*>(lp)[y * W + x] = static_cast<uint8_t>(arg[x]);
            }
        });
        Py_END_ALLOW_THREADS
        Py_RETURN_NONE;
    }
    Py_BEGIN_ALLOW_THREADS
    for_blocks(s, ty, tx, C, [&](Py_ssize_t y, Py_ssize_t x, const float* v) {
        Py_ssize_t best = 0;
        float m = v[0];
        for (Py_ssize_t c = 1; c < C; ++c)
            if (v[c] > m) m = v[c], best = c;
        if (wide) static_cast<uint16_t*>(lp)[y * W + x] = static_cast<uint16_t>(best);
        else static_cast<uint8_t*>(lp)[y * W + x] = static_cast<uint8_t>(best);
        if (cf) {
            float sum = 0.0f;
            for (Py_ssize_t c = 0; c < C; ++c) sum += std::exp(v[c] - m);
            cf[y * W + x] = 1.0f / sum;
        }
    });
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

// scores (N, h, w): each plane upsampled and thresholded; counts[n] = (#v > thr + off, #v > thr - off).
PyObject* upsample_threshold(PyObject*, PyObject* args) {
    PyObject *s_o, *tyi_o, *tyw_o, *txi_o, *txw_o, *m_o, *cnt_o;
    float thr, off;
    if (!PyArg_ParseTuple(args, "OOOOOffOO", &s_o, &tyi_o, &tyw_o, &txi_o, &txw_o, &thr, &off, &m_o, &cnt_o))
        return nullptr;
    Resample rs;
    Buf m, cnt;
    if (!rs.get(s_o, tyi_o, tyw_o, txi_o, txw_o) || !m.get(m_o, true, "masks")) return nullptr;
    const Scores& s = rs.s;
    const Taps &ty = rs.ty, &tx = rs.tx;
    Py_ssize_t N = s.C, H = ty.n, W = tx.n;
    if (!check(m.is('b', 1) && m.view.ndim == 3 && m.dim(0) == N && m.dim(1) == H && m.dim(2) == W,
               "masks must be (N, H, W) bool"))
        return nullptr;
    int64_t* counts = nullptr;
    if (cnt_o != Py_None) {
        if (!cnt.get(cnt_o, true, "counts")) return nullptr;
        if (!check(cnt.is('i', 8) && cnt.view.len == N * 16, "counts must be (N, 2) int64")) return nullptr;
        counts = cnt.ptr<int64_t>();
    }
    bool* mp = m.ptr<bool>();
    // One plane at a time (planes are independent): rows of a plane split across threads, counts per thread.
    Py_BEGIN_ALLOW_THREADS
    Py_ssize_t blocks = (H + ROW_BLOCK - 1) / ROW_BLOCK;
    for (Py_ssize_t n = 0; n < N; ++n) {
        const float* plane = s.p + n * s.h * s.w;
        std::vector<int64_t> hi(blocks, 0), lo(blocks, 0);
        float t_hi = thr + off, t_lo = thr - off;
        parallel_for(blocks, double(H) * W * ty.k, [&](Py_ssize_t b0, Py_ssize_t b1) {
            RowCache rc;
            float v;
            for (Py_ssize_t blk = b0; blk < b1; ++blk) {
                Py_ssize_t y0 = blk * ROW_BLOCK, y1 = std::min(H, y0 + ROW_BLOCK);
                fill_rows<float>(rc, ty, y0, y1, 1, tx, 1, 0, [&](Py_ssize_t r) { return plane + r * s.w; });
                int64_t h_count = 0, l_count = 0;
                for (Py_ssize_t y = y0; y < y1; ++y) {
                    bool* row = mp + (n * H + y) * W;
                    for (Py_ssize_t x = 0; x < W; ++x) {
                        vpix(rc, ty, y, x, 1, W, &v);
                        row[x] = v > thr;
                        h_count += v > t_hi;
                        l_count += v > t_lo;
                    }
                }
                hi[blk] = h_count;
                lo[blk] = l_count;
            }
        });
        if (counts) {
            int64_t a = 0, b = 0;
            for (Py_ssize_t k = 0; k < blocks; ++k) a += hi[k], b += lo[k];
            counts[2 * n] = a;
            counts[2 * n + 1] = b;
        }
    }
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

// -- paste_masks -------------------------------------------------------------------------------------
// torchvision's paste: the (M, M) mask padded by one zero pixel, resized bilinearly (half-pixel
// centres, source clamped at 0) to the grown box's (h, w), thresholded, only inside the image.
struct Axis {
    std::vector<int32_t> i0, i1;
    std::vector<float> l0, l1;
};

void axis_taps(Py_ssize_t n_out, Py_ssize_t n_in, Axis& a) {
    a.i0.resize(n_out), a.i1.resize(n_out), a.l0.resize(n_out), a.l1.resize(n_out);
    float scale = static_cast<float>(n_in) / static_cast<float>(n_out);
    for (Py_ssize_t j = 0; j < n_out; ++j) {
        float src = (static_cast<float>(j) + 0.5f) * scale;
        src -= 0.5f;
        if (src < 0.0f) src = 0.0f;
        int32_t i0 = std::min<int32_t>(static_cast<int32_t>(src), static_cast<int32_t>(n_in - 1));
        a.i0[j] = i0;
        a.i1[j] = std::min<int32_t>(i0 + 1, static_cast<int32_t>(n_in - 1));
        a.l1[j] = src - static_cast<float>(i0);
        a.l0[j] = 1.0f - a.l1[j];
    }
}

PyObject* paste_masks(PyObject*, PyObject* args) {
    PyObject *m_o, *b_o, *out_o;
    float thr;
    if (!PyArg_ParseTuple(args, "OOfO", &m_o, &b_o, &thr, &out_o)) return nullptr;
    Buf m, bx, out;
    if (!m.get(m_o, false, "masks") || !bx.get(b_o, false, "boxes") || !out.get(out_o, true, "out")) return nullptr;
    if (!check(m.is('f', 4) && m.view.ndim == 3 && m.dim(1) == m.dim(2), "masks must be (N, M, M) float32") ||
        !check(bx.is('i', 4) && bx.view.ndim == 2 && bx.dim(0) == m.dim(0) && bx.dim(1) == 4, "boxes must be (N, 4) int32") ||
        !check(out.is('b', 1) && out.view.ndim == 3 && out.dim(0) == m.dim(0), "out must be (N, H, W) bool"))
        return nullptr;
    Py_ssize_t N = m.dim(0), M = m.dim(1), P = M + 2, H = out.dim(1), W = out.dim(2);
    const float* mp = m.ptr<float>();
    const int32_t* bp = bx.ptr<int32_t>();
    bool* op = out.ptr<bool>();
    double work = 0;
    for (Py_ssize_t n = 0; n < N; ++n) work += double(bp[4 * n + 2] - bp[4 * n] + 1) * (bp[4 * n + 3] - bp[4 * n + 1] + 1);
    Py_BEGIN_ALLOW_THREADS
    parallel_for(N, work * 8, [&](Py_ssize_t n0, Py_ssize_t n1) {
        Axis ax, ay;
        std::vector<float> padded(P * P), rows;  // rows: padded rows widened to the box, each once
        std::vector<char> widened(P);
        for (Py_ssize_t n = n0; n < n1; ++n) {
            int32_t x0 = bp[4 * n], y0 = bp[4 * n + 1], x1 = bp[4 * n + 2], y1 = bp[4 * n + 3];
            Py_ssize_t w = std::max<Py_ssize_t>(x1 - x0 + 1, 1), h = std::max<Py_ssize_t>(y1 - y0 + 1, 1);
            Py_ssize_t xa = std::max<Py_ssize_t>(x0, 0), xb = std::min<Py_ssize_t>(Py_ssize_t(x1) + 1, W);
            Py_ssize_t ya = std::max<Py_ssize_t>(y0, 0), yb = std::min<Py_ssize_t>(Py_ssize_t(y1) + 1, H);
            if (xb <= xa || yb <= ya) continue;
            std::fill(padded.begin(), padded.end(), 0.0f);
            for (Py_ssize_t r = 0; r < M; ++r) std::memcpy(&padded[(r + 1) * P + 1], mp + (n * M + r) * M, M * sizeof(float));
            axis_taps(w, P, ax);
            axis_taps(h, P, ay);
            Py_ssize_t span = xb - xa;
            rows.resize(P * span);
            std::fill(widened.begin(), widened.end(), 0);
            // Horizontal pass of padded row r over the visible columns: the reference's h0 (or h1) for every
            // output row that reads r, computed once instead of once per output row.
            auto widen = [&](Py_ssize_t r) -> const float* {
                float* dst = &rows[r * span];
                if (!widened[r]) {
                    const float* src = &padded[r * P];
                    for (Py_ssize_t x = xa; x < xb; ++x) {
                        Py_ssize_t i = x - x0;
                        float v = src[ax.i0[i]] * ax.l0[i];
                        v += src[ax.i1[i]] * ax.l1[i];
                        dst[x - xa] = v;
                    }
                    widened[r] = 1;
                }
                return dst;
            };
            bool* plane = op + n * H * W;
            for (Py_ssize_t y = ya; y < yb; ++y) {
                Py_ssize_t j = y - y0;
                const float* h0 = widen(ay.i0[j]);
                const float* h1 = widen(ay.i1[j]);
                float wy0 = ay.l0[j], wy1 = ay.l1[j];
                bool* dst = plane + y * W + xa;
                for (Py_ssize_t k = 0; k < span; ++k) {
                    float v = h0[k] * wy0;
                    v += h1[k] * wy1;
                    dst[k] = v > thr;
                }
            }
        }
    });
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

// -- rle_strings -------------------------------------------------------------------------------------
// COCO's compressed RLE (pycocotools' maskApi.c rleEncode + rleToString): run lengths in column-major
// order starting with a run of zeros, each count (minus the one two back, from the third on) written
// in 5-bit groups with a continuation bit, offset by 48 into printable ASCII.
std::string rle_string(const bool* m, Py_ssize_t H, Py_ssize_t W) {
    std::vector<int64_t> counts;
    bool current = false;
    int64_t run = 0;
    for (Py_ssize_t x = 0; x < W; ++x)
        for (Py_ssize_t y = 0; y < H; ++y) {
            bool v = m[y * W + x];
            if (v != current) {
                counts.push_back(run);
                run = 0;
                current = v;
            }
            ++run;
        }
    counts.push_back(run);
    std::string s;
    s.reserve(counts.size() * 2);
    for (size_t i = 0; i < counts.size(); ++i) {
        int64_t x = counts[i];
        if (i > 2) x -= counts[i - 2];
        bool more = true;
        while (more) {
            char c = static_cast<char>(x & 0x1f);
            x >>= 5;
            more = (c & 0x10) ? x != -1 : x != 0;
            if (more) c |= 0x20;
            s.push_back(static_cast<char>(c + 48));
        }
    }
    return s;
}

PyObject* rle_strings(PyObject*, PyObject* args) {
    PyObject* m_o;
    if (!PyArg_ParseTuple(args, "O", &m_o)) return nullptr;
    Buf m;
    if (!m.get(m_o, false, "masks")) return nullptr;
    if (!check(m.is('b', 1) && m.view.ndim == 3, "masks must be (N, H, W) bool")) return nullptr;
    Py_ssize_t N = m.dim(0), H = m.dim(1), W = m.dim(2);
    std::vector<std::string> out(N);
    const bool* p = m.ptr<bool>();
    Py_BEGIN_ALLOW_THREADS
    parallel_for(N, double(N) * H * W, [&](Py_ssize_t a, Py_ssize_t b) {
        for (Py_ssize_t n = a; n < b; ++n) out[n] = rle_string(p + n * H * W, H, W);
    });
    Py_END_ALLOW_THREADS
    PyObject* list = PyList_New(N);
    if (!list) return nullptr;
    for (Py_ssize_t n = 0; n < N; ++n) {
        PyObject* s = PyUnicode_FromStringAndSize(out[n].data(), static_cast<Py_ssize_t>(out[n].size()));
        if (!s) {
            Py_DECREF(list);
            return nullptr;
        }
        PyList_SET_ITEM(list, n, s);
    }
    return list;
}

// -- overlay_labels ----------------------------------------------------------------------------------
// out = image where label == 0, else (image * (256 - A) + colour * A + 128) >> 8 per channel.
PyObject* overlay_labels(PyObject*, PyObject* args) {
    PyObject *im_o, *lab_o, *col_o, *out_o;
    int A;
    if (!PyArg_ParseTuple(args, "OOOiO", &im_o, &lab_o, &col_o, &A, &out_o)) return nullptr;
    Buf im, lab, col, out;
    if (!im.get(im_o, false, "image") || !lab.get(lab_o, false, "labels") || !col.get(col_o, false, "colours") ||
        !out.get(out_o, true, "out"))
        return nullptr;
    if (!check(im.is('u', 1) && im.view.ndim == 3 && im.dim(2) == 3, "image must be (H, W, 3) uint8") ||
        !check(out.is('u', 1) && out.view.len == im.view.len, "out must match image") ||
        !check(lab.view.ndim == 2 && lab.dim(0) == im.dim(0) && lab.dim(1) == im.dim(1) && (lab.is('u', 1) || lab.is('u', 2)),
               "labels must be (H, W) uint8 or uint16") ||
        !check(col.is('u', 1) && col.view.ndim == 2 && col.dim(1) == 3, "colours must be (K, 3) uint8") ||
        !check(A >= 0 && A <= 256, "alpha out of range"))
        return nullptr;
    Py_ssize_t H = im.dim(0), W = im.dim(1), K = col.dim(0);
    const uint8_t* ip = im.ptr<uint8_t>();
    const uint8_t* cp = col.ptr<uint8_t>();
    uint8_t* op = out.ptr<uint8_t>();
    bool wide = lab.view.itemsize == 2;
    const void* lp = lab.view.buf;
    std::atomic<bool> ok{true};
    Py_BEGIN_ALLOW_THREADS
    parallel_for(H, double(H) * W * 3, [&](Py_ssize_t y0, Py_ssize_t y1) {
        for (Py_ssize_t y = y0; y < y1; ++y)
            for (Py_ssize_t x = 0; x < W; ++x) {
                Py_ssize_t i = y * W + x;
                unsigned l = wide ? static_cast<const uint16_t*>(lp)[i] : static_cast<const uint8_t*>(lp)[i];
                const uint8_t* s = ip + 3 * i;
                uint8_t* d = op + 3 * i;
                if (l == 0 || static_cast<Py_ssize_t>(l) >= K) {
                    if (static_cast<Py_ssize_t>(l) >= K) ok.store(false, std::memory_order_relaxed);
                    d[0] = s[0], d[1] = s[1], d[2] = s[2];
                    continue;
                }
                const uint8_t* c = cp + 3 * l;
                for (int k = 0; k < 3; ++k) d[k] = static_cast<uint8_t>((s[k] * (256 - A) + c[k] * A + 128) >> 8);
            }
    });
    Py_END_ALLOW_THREADS
    if (!check(ok.load(), "a label is past the end of the colour table")) return nullptr;
    Py_RETURN_NONE;
}

// -- panoptic_fuse -----------------------------------------------------------------------------------
// Panoptic FPN's fusion; the twin is segrt/runtime/panoptic_fusion.py's fuse_reference. Things by descending
// score (stable, NaN last: NumPy's argsort of -score), each counted and pasted inside its window only (the
// sequential part: an instance reads what the earlier ones pasted). Then the stuff, in two passes over the
// image with rows split across threads: count each class's free pixels (and, up to 64 classes, mark the rows
// and columns they touch, which gives the bboxes), then give the kept classes' free pixels their ids.
// Segments come back as (source, category, area, x, y, w, h): source is the instance index of a thing, the
// semantic class of stuff.
struct Window {
    Py_ssize_t y0 = 0, y1 = 0, x0 = 0, x1 = 0;  // rows [y0, y1), columns [x0, x1)
};

struct Extent {  // inclusive pixel extent
    Py_ssize_t y0 = PY_SSIZE_T_MAX, y1 = -1, x0 = PY_SSIZE_T_MAX, x1 = -1;
    void add(Py_ssize_t y, Py_ssize_t xa, Py_ssize_t xb) {
        y0 = std::min(y0, y), y1 = std::max(y1, y), x0 = std::min(x0, xa), x1 = std::max(x1, xb);
    }
    void merge(const Extent& o) {
        y0 = std::min(y0, o.y0), y1 = std::max(y1, o.y1), x0 = std::min(x0, o.x0), x1 = std::max(x1, o.x1);
    }
};

struct Segment {
    Py_ssize_t source;
    int64_t category, area;
    Extent box;
};

// First and last index of a nonzero byte in v[0, n) (n > 0, one known to be set).
inline void nonzero_span(const uint8_t* v, Py_ssize_t n, Py_ssize_t& first, Py_ssize_t& last) {
    first = 0, last = n - 1;
    while (!v[first]) ++first;
    while (!v[last]) --last;
}

// Instances in the twin's order, up to the first not confident; those of no thing category left out.
std::vector<Py_ssize_t> thing_order(const float* score, const uint8_t* confident, const int32_t* category,
                                    Py_ssize_t N) {
    std::vector<Py_ssize_t> order(N), out;
    for (Py_ssize_t i = 0; i < N; ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(), [&](Py_ssize_t a, Py_ssize_t b) {
        float ka = -score[a], kb = -score[b];
        if (std::isnan(ka)) return false;
        return std::isnan(kb) || ka < kb;
    });
    for (Py_ssize_t k : order) {
        if (!confident[k]) break;
        if (category[k] != 0) out.push_back(k);
    }
    return out;
}

inline int64_t count_row(const uint8_t* m, Py_ssize_t n) {
    int64_t c = 0;
    for (Py_ssize_t x = 0; x < n; ++x) c += m[x] != 0;
    return c;
}

// The rows and columns holding the mask (no box given), and its area.
Window mask_window(const uint8_t* m, Py_ssize_t H, Py_ssize_t W, std::vector<uint8_t>& cols, int64_t& area) {
    Window w;
    Py_ssize_t first = -1, last = -1;
    cols.assign(W, 0);
    area = 0;
    for (Py_ssize_t y = 0; y < H; ++y) {
        const uint8_t* row = m + y * W;
        int64_t c = count_row(row, W);
        if (!c) continue;
        if (first < 0) first = y;
        last = y;
        area += c;
        for (Py_ssize_t x = 0; x < W; ++x) cols[x] |= row[x];
    }
    if (first < 0) return w;
    nonzero_span(cols.data(), W, w.x0, w.x1);
    w.y0 = first, w.y1 = last + 1, w.x1 += 1;
    return w;
}

constexpr Py_ssize_t AHEAD = 8;  // rows prefetched: the mask planes are cold and each window row is a short read

inline void prefetch_row(const uint8_t* row, const Window& w) {
    for (Py_ssize_t x = w.x0; x < w.x1; x += 64) __builtin_prefetch(row + x);
    __builtin_prefetch(row + w.x1 - 1);
}

inline void prefetch_window_top(const uint8_t* m, Py_ssize_t W, const Window& w) {
    for (Py_ssize_t y = w.y0; y < std::min(w.y1, w.y0 + AHEAD); ++y) prefetch_row(m + y * W, w);
}

// The instance's pixels in the window, and those still free, in one pass.
void count_in_window(const uint8_t* m, const int32_t* pan, Py_ssize_t W, const Window& w, int64_t& area,
                     int64_t& free) {
    area = 0, free = 0;
    for (Py_ssize_t y = w.y0; y < w.y1; ++y) {
        const uint8_t* mr = m + y * W;
        const int32_t* pr = pan + y * W;
        if (y + AHEAD < w.y1) prefetch_row(mr + AHEAD * W, w);
        int32_t a = 0, f = 0;
        for (Py_ssize_t x = w.x0; x < w.x1; ++x) {
            int32_t in = mr[x] != 0;
            a += in;
            f += in & static_cast<int32_t>(pr[x] == 0);
        }
        area += a, free += f;
    }
}

// Gives the instance's free pixels in the window the id `id` (at least one is free); their extent.
Extent paste_free(const uint8_t* m, int32_t* pan, Py_ssize_t W, const Window& w, int32_t id,
                  std::vector<uint8_t>& cols) {
    Extent e;
    Py_ssize_t n = w.x1 - w.x0;
    cols.assign(n, 0);
    for (Py_ssize_t y = w.y0; y < w.y1; ++y) {
        const uint8_t* mr = m + y * W + w.x0;
        int32_t* pr = pan + y * W + w.x0;
        uint8_t any = 0;
        for (Py_ssize_t x = 0; x < n; ++x) {
            int32_t v = pr[x];
            uint8_t take = static_cast<uint8_t>((mr[x] != 0) & (v == 0));
            pr[x] = take ? id : v;
            cols[x] |= take;
            any |= take;
        }
        if (any) e.y0 = std::min(e.y0, y), e.y1 = y;
    }
    nonzero_span(cols.data(), n, e.x0, e.x1);
    e.x0 += w.x0, e.x1 += w.x0;
    return e;
}

// Windows (from the boxes, else from each mask, with its area: whole-image scans, split across threads).
void thing_windows(const uint8_t* masks, const std::vector<Py_ssize_t>& order, const int64_t* boxes_window,
                   Py_ssize_t H, Py_ssize_t W, std::vector<Window>& win, std::vector<int64_t>& area) {
    Py_ssize_t K = static_cast<Py_ssize_t>(order.size());
    win.resize(K), area.assign(K, -1);
    if (boxes_window) {
        for (Py_ssize_t j = 0; j < K; ++j) {
            const int64_t* bw = boxes_window + 4 * order[j];
            win[j] = {bw[0], bw[1], bw[2], bw[3]};
        }
        return;
    }
    parallel_for(K, double(K) * H * W, [&](Py_ssize_t a, Py_ssize_t b) {
        std::vector<uint8_t> cols;
        for (Py_ssize_t j = a; j < b; ++j) win[j] = mask_window(masks + order[j] * H * W, H, W, cols, area[j]);
    });
}

void paste_things(const uint8_t* masks, const float* score, const uint8_t* confident, const int32_t* category,
                  const int64_t* boxes_window, Py_ssize_t N, Py_ssize_t H, Py_ssize_t W, double overlap_thr,
                  int32_t* pan, std::vector<Segment>& out) {
    std::vector<Py_ssize_t> order = thing_order(score, confident, category, N);
    std::vector<Window> win;
    std::vector<int64_t> known_area;
    thing_windows(masks, order, boxes_window, H, W, win, known_area);
    std::vector<uint8_t> cols;
    if (!order.empty()) prefetch_window_top(masks + order[0] * H * W, W, win[0]);
    for (size_t j = 0; j < order.size(); ++j) {
        if (j + 1 < order.size()) prefetch_window_top(masks + order[j + 1] * H * W, W, win[j + 1]);
        if (known_area[j] == 0) continue;
        const uint8_t* m = masks + order[j] * H * W;
        int64_t area, free;
        count_in_window(m, pan, W, win[j], area, free);
        if (area == 0) continue;
        if (static_cast<double>(area - free) / static_cast<double>(area) > overlap_thr || free == 0) continue;
        Extent e = paste_free(m, pan, W, win[j], static_cast<int32_t>(out.size() + 1), cols);
        out.push_back({order[j], category[order[j]], free, e});
    }
}

// A label's class, or C for a label with no class.
template <class T>
inline size_t class_index(T v, Py_ssize_t C) {
    bool ok = !(v < T(0)) && static_cast<uint64_t>(v) < static_cast<uint64_t>(C);
    return ok ? static_cast<size_t>(v) : static_cast<size_t>(C);
}

constexpr Py_ssize_t MARKED_CLASSES = 64;  // classes whose rows and columns the count pass marks (bits of a word)

struct StuffCounts {
    std::vector<int64_t> counts;       // C + 1 free-pixel counts; the last: free pixels whose label has no class
    std::vector<uint64_t> rows, cols;  // with Mark: per row / column, bit c set where class c has a free pixel
};

// Pass 1. Four interleaved histograms so that runs of one label do not wait on one counter.
template <bool Mark, class T>
void count_free(const T* sem, const int32_t* pan, Py_ssize_t H, Py_ssize_t W, Py_ssize_t C, StuffCounts& out) {
    const int threads = thread_count();
    const size_t bins = static_cast<size_t>(C + 1);
    std::vector<std::vector<int64_t>> hist(threads, std::vector<int64_t>(4 * bins, 0));
    std::vector<std::vector<uint64_t>> cols(Mark ? threads : 0, std::vector<uint64_t>(W, 0));
    std::vector<uint64_t> bit(bins, 0);
    for (Py_ssize_t c = 0; Mark && c < C; ++c) bit[c] = uint64_t(1) << c;
    out.rows.assign(Mark ? H : 0, 0);
    std::atomic<int> next{0};
    parallel_for(H, double(H) * W, [&](Py_ssize_t y0, Py_ssize_t y1) {
        int t = next.fetch_add(1);
        int64_t* h = hist[t].data();
        uint64_t* cm = Mark ? cols[t].data() : nullptr;
        const Py_ssize_t w = W, nc = C;  // locals: the int64 counters could alias the captured ones
        for (Py_ssize_t y = y0; y < y1; ++y) {
            const T* sr = sem + y * w;
            const int32_t* pr = pan + y * w;
            uint64_t rm = 0;
            for (Py_ssize_t x = 0; x < w; ++x) {
                size_t k = class_index(sr[x], nc);
                int64_t f = pr[x] == 0;
                h[(x & 3) * bins + k] += f;
                if constexpr (Mark) {
                    uint64_t b = bit[k] & (uint64_t(0) - static_cast<uint64_t>(f));
                    cm[x] |= b;
                    rm |= b;
                }
            }
            if constexpr (Mark) out.rows[y] = rm;
        }
    });
    out.counts.assign(bins, 0);
    for (auto& h : hist)
        for (size_t k = 0; k < 4 * bins; ++k) out.counts[k % bins] += h[k];
    if constexpr (Mark) {
        out.cols.assign(W, 0);
        for (auto& c : cols)
            for (Py_ssize_t x = 0; x < W; ++x) out.cols[x] |= c[x];
    }
}

constexpr Py_ssize_t FEW_CLASSES = 16;  // uint8 labels of up to this many classes: counted class by class

// Pass 1 for uint8 labels of few classes, in loops the compiler vectorises: each row's free labels (0xFF where
// taken), then one compare per class; the free pixels whose label has no class are the rest.
void count_free_few(const uint8_t* sem, const int32_t* pan, Py_ssize_t H, Py_ssize_t W, Py_ssize_t C,
                    StuffCounts& out) {
    const int threads = thread_count();
    std::vector<std::vector<int64_t>> hist(threads, std::vector<int64_t>(C + 1, 0));
    std::vector<std::vector<uint8_t>> cols(threads, std::vector<uint8_t>(C * W, 0));
    out.rows.assign(H, 0);
    std::atomic<int> next{0};
    parallel_for(H, double(H) * W, [&](Py_ssize_t y0, Py_ssize_t y1) {
        const int t = next.fetch_add(1);
        const Py_ssize_t w = W, nc = C;  // locals: stores through uint8_t* could alias the captured ones
        int64_t* h = hist[t].data();
        std::vector<uint8_t> row(w);
        uint8_t* lab = row.data();
        for (Py_ssize_t y = y0; y < y1; ++y) {
            const uint8_t* sr = sem + y * w;
            const int32_t* pr = pan + y * w;
            int32_t free = 0, known = 0;
            for (Py_ssize_t x = 0; x < w; ++x) {
                int32_t f = pr[x] == 0;
                lab[x] = static_cast<uint8_t>(sr[x] | static_cast<uint8_t>(f - 1));  // 0xFF where taken
                free += f;
            }
            uint64_t rm = 0;
            for (Py_ssize_t c = 0; c < nc; ++c) {
                uint8_t* cm = cols[t].data() + c * w;
                const uint8_t cls = static_cast<uint8_t>(c);
                int32_t n = 0;
                for (Py_ssize_t x = 0; x < w; ++x) {
                    uint8_t hit = lab[x] == cls;
                    n += hit;
                    cm[x] |= hit;
                }
                h[c] += n, known += n;
                rm |= n ? uint64_t(1) << c : 0;
            }
            h[nc] += free - known;
            out.rows[y] = rm;
        }
    });
    out.counts.assign(C + 1, 0);
    out.cols.assign(W, 0);
    for (int t = 0; t < threads; ++t) {
        for (Py_ssize_t k = 0; k <= C; ++k) out.counts[k] += hist[t][k];
        for (Py_ssize_t c = 0; c < C; ++c)
            for (Py_ssize_t x = 0; x < W; ++x) out.cols[x] |= static_cast<uint64_t>(cols[t][c * W + x]) << c;
    }
}

template <class T>
void count_stuff(const T* sem, const int32_t* pan, Py_ssize_t H, Py_ssize_t W, Py_ssize_t C, StuffCounts& sc) {
    if constexpr (std::is_same_v<T, uint8_t>)
        if (C <= FEW_CLASSES) return count_free_few(sem, pan, H, W, C, sc);
    if (C <= MARKED_CLASSES) count_free<true>(sem, pan, H, W, C, sc);
    else count_free<false>(sem, pan, H, W, C, sc);
}

// Pass 2: the free pixels of kept classes take their segment's id (ids[class]; 0, and ids[C], leave them VOID).
// Rows without a kept class are skipped when the rows are marked; otherwise each segment's extent is found here.
template <class T>
void assign_stuff(const T* sem, int32_t* pan, Py_ssize_t H, Py_ssize_t W, Py_ssize_t C, const std::vector<int32_t>& ids,
                  const StuffCounts& sc, uint64_t kept_bits, int32_t first_id, std::vector<Extent>* boxes) {
    const int threads = thread_count();
    std::vector<std::vector<Extent>> part(boxes ? threads : 0, std::vector<Extent>(boxes ? boxes->size() : 0));
    std::atomic<int> next{0};
    parallel_for(H, double(H) * W, [&](Py_ssize_t y0, Py_ssize_t y1) {
        std::vector<Extent>* e = boxes ? &part[next.fetch_add(1)] : nullptr;
        for (Py_ssize_t y = y0; y < y1; ++y) {
            if (!boxes && !(sc.rows[y] & kept_bits)) continue;
            int32_t* pr = pan + y * W;
            const T* sr = sem + y * W;
            for (Py_ssize_t x = 0; x < W; ++x) {
                int32_t v = pr[x], s = ids[class_index(sr[x], C)];
                pr[x] = v ? v : s;
                if (e && !v && s) (*e)[s - first_id].add(y, x, x);
            }
        }
    });
    for (auto& p : part)
        for (size_t k = 0; k < boxes->size(); ++k) (*boxes)[k].merge(p[k]);
}

constexpr size_t FEW_KEPT = 4;  // uint8 labels with up to this many stuff segments: assigned class by class

// Pass 2 for uint8 labels and few segments, in loops the compiler vectorises: one select per segment.
void assign_few(const uint8_t* sem, int32_t* pan, Py_ssize_t H, Py_ssize_t W, const std::vector<Segment>& stuff,
                int32_t first_id, const StuffCounts& sc, uint64_t kept_bits) {
    parallel_for(H, double(H) * W * stuff.size() / 4, [&](Py_ssize_t y0, Py_ssize_t y1) {
        const Py_ssize_t w = W;
        for (Py_ssize_t y = y0; y < y1; ++y) {
            if (!(sc.rows[y] & kept_bits)) continue;
            int32_t* pr = pan + y * w;
            const uint8_t* sr = sem + y * w;
            for (size_t k = 0; k < stuff.size(); ++k) {
                if (!(sc.rows[y] & (uint64_t(1) << stuff[k].source))) continue;
                const uint8_t cls = static_cast<uint8_t>(stuff[k].source);
                const int32_t id = first_id + static_cast<int32_t>(k);
                for (Py_ssize_t x = 0; x < w; ++x) {
                    int32_t v = pr[x];
                    pr[x] = ((v == 0) & (sr[x] == cls)) ? id : v;
                }
            }
        }
    });
}

// Class c's extent from the marked rows and columns.
Extent marked_extent(const StuffCounts& sc, Py_ssize_t c) {
    Extent e;
    uint64_t b = uint64_t(1) << c;
    Py_ssize_t H = static_cast<Py_ssize_t>(sc.rows.size()), W = static_cast<Py_ssize_t>(sc.cols.size());
    for (Py_ssize_t y = 0; y < H; ++y)
        if (sc.rows[y] & b) e.y0 = std::min(e.y0, y), e.y1 = y;
    for (Py_ssize_t x = 0; x < W; ++x)
        if (sc.cols[x] & b) e.x0 = std::min(e.x0, x), e.x1 = x;
    return e;
}

template <class T>
void fuse_stuff(const T* sem, int32_t* pan, Py_ssize_t H, Py_ssize_t W, const int32_t* lut, Py_ssize_t C,
                int64_t area_limit, int32_t first_id, const StuffCounts& sc, std::vector<Segment>& stuff) {
    std::vector<int32_t> ids(C + 1, 0);
    uint64_t kept_bits = 0;
    for (Py_ssize_t c = 0; c < C; ++c)
        if (lut[c] && sc.counts[c] >= std::max<int64_t>(area_limit, 1)) {
            ids[c] = first_id + static_cast<int32_t>(stuff.size());
            stuff.push_back({c, lut[c], sc.counts[c], {}});
            if (c < MARKED_CLASSES) kept_bits |= uint64_t(1) << c;
        }
    if (stuff.empty()) return;
    bool marked = !sc.rows.empty();
    std::vector<Extent> boxes(stuff.size());
    if constexpr (std::is_same_v<T, uint8_t>)
        if (marked && stuff.size() <= FEW_KEPT) {
            assign_few(sem, pan, H, W, stuff, first_id, sc, kept_bits);
            for (size_t k = 0; k < stuff.size(); ++k) stuff[k].box = marked_extent(sc, stuff[k].source);
            return;
        }
    assign_stuff(sem, pan, H, W, C, ids, sc, kept_bits, first_id, marked ? nullptr : &boxes);
    for (size_t k = 0; k < stuff.size(); ++k) stuff[k].box = marked ? marked_extent(sc, stuff[k].source) : boxes[k];
}

// The largest free label (some free label has no class: the error path).
template <class T>
T max_free_label(const T* sem, const int32_t* pan, Py_ssize_t n) {
    bool seen = false;
    T hi = T(0);
    for (Py_ssize_t i = 0; i < n; ++i)
        if (!pan[i]) hi = seen ? std::max(hi, sem[i]) : sem[i], seen = true;
    return hi;
}

inline PyObject* py_int(int64_t v) { return PyLong_FromLongLong(v); }
inline PyObject* py_int(uint64_t v) { return PyLong_FromUnsignedLongLong(v); }

PyObject* segment_list(const std::vector<Segment>& segs) {
    PyObject* list = PyList_New(static_cast<Py_ssize_t>(segs.size()));
    for (size_t k = 0; list && k < segs.size(); ++k) {
        const Segment& s = segs[k];
        PyObject* t = Py_BuildValue("(nLLnnnn)", s.source, static_cast<long long>(s.category),
                                    static_cast<long long>(s.area), s.box.x0, s.box.y0, s.box.x1 - s.box.x0 + 1,
                                    s.box.y1 - s.box.y0 + 1);
        if (!t) Py_CLEAR(list);
        else PyList_SET_ITEM(list, static_cast<Py_ssize_t>(k), t);
    }
    return list;
}

PyObject* fusion_result(const std::vector<Segment>& things, const std::vector<Segment>& stuff, PyObject* bad) {
    if (!bad) return nullptr;
    PyObject *a = segment_list(things), *b = segment_list(stuff);
    PyObject* r = (a && b) ? PyTuple_Pack(3, a, b, bad) : nullptr;
    Py_XDECREF(a);
    Py_XDECREF(b);
    Py_DECREF(bad);
    return r;
}

template <class T>
PyObject* fuse_typed(const T* sem, const uint8_t* masks, const float* score, const uint8_t* confident,
                     const int32_t* category, const int64_t* windows, Py_ssize_t N, Py_ssize_t H, Py_ssize_t W,
                     double overlap_thr, const int32_t* lut, Py_ssize_t C, int64_t area_limit, int32_t* pan) {
    std::vector<Segment> things, stuff;
    StuffCounts sc;
    T hi = T(0);
    bool bad;
    Py_BEGIN_ALLOW_THREADS
    paste_things(masks, score, confident, category, windows, N, H, W, overlap_thr, pan, things);
    count_stuff(sem, pan, H, W, C, sc);
    bad = sc.counts[C] > 0;
    if (bad) hi = max_free_label(sem, pan, H * W);
    else fuse_stuff(sem, pan, H, W, lut, C, area_limit, static_cast<int32_t>(things.size() + 1), sc, stuff);
    Py_END_ALLOW_THREADS
    using Wide = std::conditional_t<std::is_signed_v<T>, int64_t, uint64_t>;
    PyObject* bad_label = bad ? py_int(static_cast<Wide>(hi)) : (Py_INCREF(Py_None), Py_None);
    return fusion_result(things, stuff, bad_label);
}

PyObject* panoptic_fuse(PyObject*, PyObject* args) {
    PyObject *sem_o, *m_o, *s_o, *conf_o, *cat_o, *win_o, *lut_o, *pan_o;
    double overlap_thr;
    long long area_limit;
    if (!PyArg_ParseTuple(args, "OOOOOOdOLO", &sem_o, &m_o, &s_o, &conf_o, &cat_o, &win_o, &overlap_thr, &lut_o,
                          &area_limit, &pan_o))
        return nullptr;
    Buf sem, m, s, conf, cat, win, lut, pan;
    if (!sem.get(sem_o, false, "semantic") || !m.get(m_o, false, "masks") || !s.get(s_o, false, "scores") ||
        !conf.get(conf_o, false, "confident") || !cat.get(cat_o, false, "categories") ||
        (win_o != Py_None && !win.get(win_o, false, "windows")) || !lut.get(lut_o, false, "stuff_lut") ||
        !pan.get(pan_o, true, "panoptic"))
        return nullptr;
    Py_ssize_t H = pan.view.ndim == 2 ? pan.dim(0) : 0, W = pan.view.ndim == 2 ? pan.dim(1) : 0;
    Py_ssize_t N = m.view.ndim == 3 ? m.dim(0) : -1, C = lut.view.ndim == 1 ? lut.dim(0) : -1;
    if (!check(pan.is('i', 4) && pan.view.ndim == 2, "panoptic must be (H, W) int32") ||
        !check(sem.view.ndim == 2 && sem.dim(0) == H && sem.dim(1) == W && (sem.kind() == 'u' || sem.kind() == 'i'),
               "semantic must be an (H, W) integer map") ||
        !check(m.is('b', 1) && N >= 0 && m.dim(1) == H && m.dim(2) == W, "masks must be (N, H, W) bool") ||
        !check(s.is('f', 4) && s.view.ndim == 1 && s.dim(0) == N, "scores must be (N,) float32") ||
        !check(conf.is('b', 1) && conf.view.ndim == 1 && conf.dim(0) == N, "confident must be (N,) bool") ||
        !check(cat.is('i', 4) && cat.view.ndim == 1 && cat.dim(0) == N, "categories must be (N,) int32") ||
        !check(win_o == Py_None || (win.is('i', 8) && win.view.ndim == 2 && win.dim(0) == N && win.dim(1) == 4),
               "windows must be (N, 4) int64 or None") ||
        !check(lut.is('i', 4) && C >= 0, "stuff_lut must be (C,) int32"))
        return nullptr;
    const int64_t* wp = win_o == Py_None ? nullptr : win.ptr<int64_t>();
    for (Py_ssize_t i = 0; wp && i < N; ++i)
        if (!check(wp[4 * i] >= 0 && wp[4 * i] <= wp[4 * i + 1] && wp[4 * i + 1] <= H && wp[4 * i + 2] >= 0 &&
                       wp[4 * i + 2] <= wp[4 * i + 3] && wp[4 * i + 3] <= W, "window out of the image"))
            return nullptr;
    auto run = [&](auto* typed) {
        return fuse_typed(typed, m.ptr<uint8_t>(), s.ptr<float>(), conf.ptr<uint8_t>(), cat.ptr<int32_t>(), wp, N, H,
                          W, overlap_thr, lut.ptr<int32_t>(), C, area_limit, pan.ptr<int32_t>());
    };
    bool u = sem.kind() == 'u';
    switch (sem.view.itemsize) {
        case 1: return u ? run(sem.ptr<uint8_t>()) : run(sem.ptr<int8_t>());
        case 2: return u ? run(sem.ptr<uint16_t>()) : run(sem.ptr<int16_t>());
        case 4: return u ? run(sem.ptr<uint32_t>()) : run(sem.ptr<int32_t>());
        case 8: return u ? run(sem.ptr<uint64_t>()) : run(sem.ptr<int64_t>());
        default: return check(false, "semantic labels must be 1, 2, 4 or 8 bytes"), nullptr;
    }
}

PyMethodDef methods[] = {
    {"resize_normalize", resize_normalize, METH_VARARGS, "image -> resized, normalised CHW region of out"},
    {"upsample", upsample, METH_VARARGS, "(C, h, w) -> (C, H, W) float32 through separable taps"},
    {"upsample_argmax", upsample_argmax, METH_VARARGS, "(C, h, w) scores -> (H, W) labels (+ confidence)"},
    {"upsample_threshold", upsample_threshold, METH_VARARGS, "(N, h, w) logits -> (N, H, W) masks (+ counts)"},
    {"paste_masks", paste_masks, METH_VARARGS, "(N, M, M) probabilities -> (N, H, W) masks inside their boxes"},
    {"rle_strings", rle_strings, METH_VARARGS, "(N, H, W) bool -> COCO compressed RLE count strings"},
    {"overlay_labels", overlay_labels, METH_VARARGS, "colour a label map over an RGB image"},
    {"panoptic_fuse", panoptic_fuse, METH_VARARGS, "Panoptic FPN fusion of instance masks and a semantic map, in place"},
    {"kernel_threads", kernel_threads, METH_NOARGS, "threads a large kernel uses on the calling thread"},
    {"set_thread_limit", set_thread_limit, METH_VARARGS, "the calling thread's kernel thread cap (0: none); returns the previous"},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_native", "segrt's native pre/post-processing kernels", -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&module); }
