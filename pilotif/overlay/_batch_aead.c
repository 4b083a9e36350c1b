/*
 * The two loops of pilotif's data plane that run native: sealing a run of packets for
 * one session, and opening a batch of WireGuard transport messages (one GRO receive of
 * one session), with ChaCha20-Poly1305 through OpenSSL's EVP interface and the GIL
 * released, so that the crypto of one batch may run while Python does something else
 * (and costs less than one call into `cryptography` per packet). The protocol stays in
 * Python: headers, counters, padding lengths and offsets are decided there.
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

PyDoc_STRVAR(seal_rows_doc,
"seal_rows(key, first_counter, packets, padded_sizes, offsets, header_size, out)\n\n"
"For each packet i: copy it to out[offsets[i] + header_size:], zero-pad it to\n"
"padded_sizes[i] bytes, encrypt it there with counter first_counter + i and write the\n"
"16-byte tag after it. The headers are the caller's.");

static PyObject *seal_rows(PyObject *self, PyObject *args) {
    Py_buffer key, output;
    unsigned long long first;
    PyObject *packets, *sizes, *offsets;
    Py_ssize_t header;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*KOOOnw*", &key, &first, &packets, &sizes, &offsets,
                          &header, &output)) {
        return NULL;
    }
    PyObject *result = NULL;
    Py_ssize_t count = 0, held = 0;
    Py_buffer *views = NULL;
    Py_ssize_t *padded = NULL, *starts = NULL;
    PyObject *packet_list = PySequence_Fast(packets, "packets must be a sequence");
    PyObject *size_list = packet_list ? PySequence_Fast(sizes, "sizes must be a sequence") : NULL;
    PyObject *offset_list =
        size_list ? PySequence_Fast(offsets, "offsets must be a sequence") : NULL;
    if (offset_list == NULL) {
        goto done;
    }
    count = PySequence_Fast_GET_SIZE(packet_list);
    if (key.len != KEY_SIZE) {
        PyErr_SetString(PyExc_ValueError, "the key is 32 bytes");
        goto done;
    }
    if (PySequence_Fast_GET_SIZE(size_list) != count ||
        PySequence_Fast_GET_SIZE(offset_list) != count || header < 0) {
        PyErr_SetString(PyExc_ValueError, "one size and one offset per packet");
        goto done;
    }
    views = PyMem_Calloc((size_t)(count ? count : 1), sizeof(Py_buffer));
    padded = PyMem_Calloc((size_t)(count ? count : 1), sizeof(Py_ssize_t));
    starts = PyMem_Calloc((size_t)(count ? count : 1), sizeof(Py_ssize_t));
    if (views == NULL || padded == NULL || starts == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t row = 0; row < count; row++) {
        PyObject *item = PySequence_Fast_GET_ITEM(packet_list, row);
        if (PyObject_GetBuffer(item, &views[row], PyBUF_SIMPLE) < 0) {
            goto done;
        }
        held++;
        padded[row] = PyLong_AsSsize_t(PySequence_Fast_GET_ITEM(size_list, row));
        starts[row] = PyLong_AsSsize_t(PySequence_Fast_GET_ITEM(offset_list, row));
        if (PyErr_Occurred()) {
            goto done;
        }
        if (padded[row] < views[row].len || padded[row] > INT_MAX || starts[row] < 0 ||
            starts[row] + header + padded[row] + TAG_SIZE > output.len) {
            PyErr_SetString(PyExc_ValueError, "a packet does not fit where it goes");
            goto done;
        }
    }
    int failed = 0;
    Py_BEGIN_ALLOW_THREADS
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    if (ctx == NULL ||
        !EVP_EncryptInit_ex(ctx, EVP_chacha20_poly1305(), NULL, key.buf, NULL)) {
        failed = 1;
    }
    unsigned char nonce[NONCE_SIZE];
    for (Py_ssize_t row = 0; !failed && row < count; row++) {
        unsigned char *text = (unsigned char *)output.buf + starts[row] + header;
        int length = (int)padded[row], written = 0;
        memmove(text, views[row].buf, (size_t)views[row].len);
        memset(text + views[row].len, 0, (size_t)(padded[row] - views[row].len));
        counter_nonce(nonce, first + (unsigned long long)row);
        if (!EVP_EncryptInit_ex(ctx, NULL, NULL, NULL, nonce) ||
            !EVP_EncryptUpdate(ctx, text, &written, text, length) ||
            !EVP_EncryptFinal_ex(ctx, text + written, &written) ||
            !EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, TAG_SIZE, text + length)) {
            failed = 1;
        }
    }
    EVP_CIPHER_CTX_free(ctx);
    Py_END_ALLOW_THREADS
    if (failed) {
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL failed to seal");
        goto done;
    }
    result = Py_NewRef(Py_None);
done:
    for (Py_ssize_t row = 0; row < held; row++) {
        PyBuffer_Release(&views[row]);
    }
    PyMem_Free(views);
    PyMem_Free(padded);
    PyMem_Free(starts);
    Py_XDECREF(packet_list);
    Py_XDECREF(size_list);
    Py_XDECREF(offset_list);
    PyBuffer_Release(&key);
    PyBuffer_Release(&output);
    return result;
}

static PyMethodDef methods[] = {
    {"open_rows", open_rows, METH_VARARGS, open_rows_doc},
    {"seal_rows", seal_rows, METH_VARARGS, seal_rows_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef batch_aead_module = {
    PyModuleDef_HEAD_INIT, "_batch_aead",
    "ChaCha20-Poly1305 over a batch of WireGuard messages, without the GIL.", -1, methods,
};

PyMODINIT_FUNC PyInit__batch_aead(void) { return PyModule_Create(&batch_aead_module); }
