/*
 * The one loop of pilotif's data plane that runs native: opening a batch of WireGuard
 * transport messages (one GRO receive of one session) with ChaCha20-Poly1305 through
 * OpenSSL's EVP interface, with the GIL released, so that the crypto of one batch runs
 * while Python does the rest (and so that it costs less than one call into
 * `cryptography` per datagram). The protocol stays in Python: this only decrypts.
 *
 * pilotif.overlay.batch_aead wraps it and holds the pure-Python equivalent, which is
 * used when this module was not built (or PILOTIF_PURE_PYTHON is set).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <openssl/evp.h>
#include <string.h>

#define KEY_SIZE 32
#define TAG_SIZE 16
#define NONCE_SIZE 12

/* WireGuard's nonce: 4 zero bytes, then the counter little-endian. */
static void counter_nonce(unsigned char *nonce, unsigned long long counter) {
    memset(nonce, 0, 4);
    for (int i = 0; i < 8; i++) {
        nonce[4 + i] = (unsigned char)(counter >> (8 * i));
    }
}

PyDoc_STRVAR(open_rows_doc,
"open_rows(key, first_counter, buffer, segment_size, count, last_size, header_size,\n"
"          plaintexts) -> list[int]\n\n"
"Decrypt `count` messages back to back in `buffer` (each `segment_size` bytes, the last\n"
"`last_size`), each a `header_size`-byte header, then ciphertext and tag; message i has\n"
"counter first_counter + i and its plaintext goes to plaintexts[i * stride:], stride\n"
"being segment_size - header_size - 16. The rows whose tag did not verify.");

static PyObject *open_rows(PyObject *self, PyObject *args) {
    Py_buffer key, input, output;
    unsigned long long first;
    Py_ssize_t segment, count, last_size, header;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*Ky*nnnnw*", &key, &first, &input, &segment, &count,
                          &last_size, &header, &output)) {
        return NULL;
    }
    PyObject *failed = NULL;
    unsigned char *verdicts = NULL;
    Py_ssize_t stride = segment - header - TAG_SIZE;
    if (key.len != KEY_SIZE) {
        PyErr_SetString(PyExc_ValueError, "the key is 32 bytes");
        goto done;
    }
    if (count < 1 || header < 0 || stride < 0 || last_size < header + TAG_SIZE ||
        last_size > segment || segment > INT_MAX ||
        input.len != (count - 1) * segment + last_size ||
        output.len < (count - 1) * stride + (last_size - header - TAG_SIZE)) {
        PyErr_SetString(PyExc_ValueError, "the buffers do not hold `count` messages");
        goto done;
    }
    verdicts = PyMem_Calloc((size_t)count, 1);
    if (verdicts == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    int setup_failed = 0;
    Py_BEGIN_ALLOW_THREADS
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    if (ctx == NULL ||
        !EVP_DecryptInit_ex(ctx, EVP_chacha20_poly1305(), NULL, key.buf, NULL)) {
        setup_failed = 1;
    } else {
        unsigned char nonce[NONCE_SIZE];
        for (Py_ssize_t row = 0; row < count; row++) {
            Py_ssize_t size = row == count - 1 ? last_size : segment;
            const unsigned char *sealed = (const unsigned char *)input.buf + row * segment;
            const unsigned char *ciphertext = sealed + header;
            int length = (int)(size - header - TAG_SIZE);
            unsigned char *plaintext = (unsigned char *)output.buf + row * stride;
            int written = 0;
            counter_nonce(nonce, first + (unsigned long long)row);
            if (!EVP_DecryptInit_ex(ctx, NULL, NULL, NULL, nonce) ||
                !EVP_DecryptUpdate(ctx, plaintext, &written, ciphertext, length) ||
                !EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, TAG_SIZE,
                                     (void *)(ciphertext + length)) ||
                EVP_DecryptFinal_ex(ctx, plaintext + written, &written) <= 0) {
                verdicts[row] = 1;
            }
        }
    }
    EVP_CIPHER_CTX_free(ctx);
    Py_END_ALLOW_THREADS
    if (setup_failed) {
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL has no ChaCha20-Poly1305");
        goto done;
    }
    failed = PyList_New(0);
    for (Py_ssize_t row = 0; failed != NULL && row < count; row++) {
        if (verdicts[row]) {
            PyObject *number = PyLong_FromSsize_t(row);
            if (number == NULL || PyList_Append(failed, number) < 0) {
                Py_CLEAR(failed);
            }
            Py_XDECREF(number);
        }
    }
done:
    PyMem_Free(verdicts);
    PyBuffer_Release(&key);
    PyBuffer_Release(&input);
    PyBuffer_Release(&output);
    return failed;
}

static PyMethodDef methods[] = {
    {"open_rows", open_rows, METH_VARARGS, open_rows_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef batch_aead_module = {
    PyModuleDef_HEAD_INIT, "_batch_aead",
    "ChaCha20-Poly1305 over a batch of WireGuard messages, without the GIL.", -1, methods,
};

PyMODINIT_FUNC PyInit__batch_aead(void) { return PyModule_Create(&batch_aead_module); }
