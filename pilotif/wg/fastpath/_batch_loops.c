/*
 * The loops of pilotif's data plane that run native: sealing a run of packets for one
 * session, sealing the segments of one TCP super-packet (what the TUN hands over with
 * TSO) as they are cut, and opening a batch of WireGuard transport messages (one GRO
 * receive of one session), with ChaCha20-Poly1305 through OpenSSL's EVP interface and
 * the GIL released, so that the crypto of one batch may run while Python does something
 * else (and costs less than one call into `cryptography` per packet); and merging the
 * usual decrypted batch (one TCP flow's next segments) into one TUN write. The protocol
 * stays in Python: which session, which counters, and whether a batch may go this way
 * at all are decided there.
 *
 * pilotif.wg.fastpath.batch_loops wraps it and holds the pure-Python equivalent, which is
 * used when this module was not built (or PILOTIF_PURE_PYTHON is set).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <string.h>

#define KEY_SIZE 32
#define TAG_SIZE 16
#define NONCE_SIZE 12
#define TRANSPORT_HEADER_SIZE 16
#define MESSAGE_TRANSPORT 4
#define PADDING_MULTIPLE 16
#define MAX_SEGMENTS 128
#define IPV4_MIN_HEADER 20
#define IPV6_HEADER 40
#define TCP_MIN_HEADER 20
#define UDP_HEADER 8
#define TCP_FIN 0x01
#define TCP_PSH 0x08
#define TCP_CWR 0x80
#define ONES 0xFFFFu
#define VIRTIO_NET_HDR_SIZE 10
#define VIRTIO_NET_HDR_F_NEEDS_CSUM 1
#define GSO_TCPV4 1
#define GSO_TCPV6 4

/* The low `size` bytes of `value`, little-endian (WireGuard's fields) at `p`. */
static void put_le(unsigned char *p, unsigned long long value, int size) {
    for (int i = 0; i < size; i++) {
        p[i] = (unsigned char)(value >> (8 * i));
    }
}

/* WireGuard's nonce: 4 zero bytes, then the counter little-endian. */
static void counter_nonce(unsigned char *nonce, unsigned long long counter) {
    memset(nonce, 0, 4);
    put_le(nonce + 4, counter, 8);
}

/* A ChaCha20-Poly1305 context holding `key`, for sealing (`encrypt` 1) or opening (0);
 * NULL when OpenSSL cannot make one. */
static EVP_CIPHER_CTX *keyed_context(const void *key, int encrypt) {
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    if (ctx != NULL &&
        !EVP_CipherInit_ex(ctx, EVP_chacha20_poly1305(), NULL, key, NULL, encrypt)) {
        EVP_CIPHER_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

/* Seal `length` bytes at `text` in place with the counter's nonce and write the tag
 * after them; 0 when OpenSSL failed. `ctx` holds the key. */
static int seal_in_place(EVP_CIPHER_CTX *ctx, unsigned long long counter, unsigned char *text,
                         int length) {
    unsigned char nonce[NONCE_SIZE];
    int written = 0;
    counter_nonce(nonce, counter);
    return EVP_EncryptInit_ex(ctx, NULL, NULL, NULL, nonce) &&
           EVP_EncryptUpdate(ctx, text, &written, text, length) &&
           EVP_EncryptFinal_ex(ctx, text + written, &written) &&
           EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, TAG_SIZE, text + length);
}

/* Release the first `held` of `views` (the buffers of a sequence's items) and free them. */
static void release_views(Py_buffer *views, Py_ssize_t held) {
    for (Py_ssize_t row = 0; row < held; row++) {
        PyBuffer_Release(&views[row]);
    }
    PyMem_Free(views);
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
    EVP_CIPHER_CTX *ctx = keyed_context(key.buf, 0);
    if (ctx == NULL) {
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
    EVP_CIPHER_CTX *ctx = keyed_context(key.buf, 1);
    failed = ctx == NULL;
    for (Py_ssize_t row = 0; !failed && row < count; row++) {
        unsigned char *text = (unsigned char *)output.buf + starts[row] + header;
        memmove(text, views[row].buf, (size_t)views[row].len);
        memset(text + views[row].len, 0, (size_t)(padded[row] - views[row].len));
        failed = !seal_in_place(ctx, first + (unsigned long long)row, text, (int)padded[row]);
    }
    EVP_CIPHER_CTX_free(ctx);
    Py_END_ALLOW_THREADS
    if (failed) {
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL failed to seal");
        goto done;
    }
    result = Py_NewRef(Py_None);
done:
    release_views(views, held);
    PyMem_Free(padded);
    PyMem_Free(starts);
    Py_XDECREF(packet_list);
    Py_XDECREF(size_list);
    Py_XDECREF(offset_list);
    PyBuffer_Release(&key);
    PyBuffer_Release(&output);
    return result;
}

static void put_be16(unsigned char *p, unsigned value) {
    p[0] = (unsigned char)(value >> 8);
    p[1] = (unsigned char)value;
}

static void put_be32(unsigned char *p, uint32_t value) {
    for (int i = 0; i < 4; i++) {
        p[i] = (unsigned char)(value >> (24 - 8 * i));
    }
}

static uint32_t get_be32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* The ones' complement sum of big-endian 16-bit words (a last odd byte padded with zero),
 * modulo 0xFFFF. Summed in the machine's own order eight bytes at a time (2^16 is 1
 * modulo 0xFFFF, so wider words add up the same), then moved to big-endian order:
 * swapping the bytes of a 16-bit sum is multiplying it by 256, modulo 0xFFFF. */
static uint64_t sum_words(const unsigned char *p, size_t n) {
    uint64_t sum = 0;
    while (n >= 8) {
        uint64_t word;
        memcpy(&word, p, 8);
        sum += (word & 0xFFFFFFFFu) + (word >> 32);
        p += 8;
        n -= 8;
    }
    while (n >= 2) {
        uint16_t word;
        memcpy(&word, p, 2);
        sum += word;
        p += 2;
        n -= 2;
    }
    const uint16_t probe = 1;
    int little = *(const unsigned char *)&probe == 1;
    if (n) {
        sum += little ? p[0] : (uint64_t)p[0] << 8;
    }
    sum %= ONES;
    return little ? sum * 256 % ONES : sum;
}

/* A checksum field for a sum: a sum that is a multiple of 0xFFFF gives 0xFFFF, never 0
 * (the other ones' complement zero, as pilotif.tun.offload writes it). */
static unsigned checksum_of(uint64_t sum) { return ONES - (unsigned)(sum % ONES); }

PyDoc_STRVAR(seal_tso_doc,
"seal_tso(key, first_counter, receiver_index, packet, transport_start, segment_payload,\n"
"         mtu, out, udp=False) -> (count, datagram_size, total)\n\n"
"Cut a TCP super-packet (with `udp`, a UDP one) as the TUN hands it over with TSO (USO):\n"
"IPv4 or IPv6 headers once, then the payload of every segment, into segments of\n"
"`segment_payload` payload bytes and seal each, as it is cut, into a WireGuard transport\n"
"message to `receiver_index` with counter first_counter + i, back to back in `out`. Each\n"
"segment gets its own IPv4 total length, ID (one more a segment) and header checksum\n"
"(IPv6: payload length), TCP sequence number (FIN and PSH only on the last, CWR only on\n"
"the first) or UDP length, and a full transport checksum (never 0), then zeros to a\n"
"multiple of 16 bytes (not past `mtu`). Every datagram but the last is `datagram_size`\n"
"bytes; `total` bytes were written. ValueError when the headers do not describe the\n"
"packet or `out` is too small. What pilotif.packet.segments.cut_segments cuts, sealed.");

static PyObject *seal_tso(PyObject *self, PyObject *args) {
    Py_buffer key, input, output;
    unsigned long long first;
    unsigned long receiver;
    Py_ssize_t start, gso_size, mtu;
    int udp = 0;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*Kky*nnnw*|p", &key, &first, &receiver, &input, &start,
                          &gso_size, &mtu, &output, &udp)) {
        return NULL;
    }
    PyObject *result = NULL;
    const unsigned char *packet = input.buf;
    Py_ssize_t length = input.len;
    const char *problem = NULL;
    int version = length > 0 ? packet[0] >> 4 : 0;
    Py_ssize_t ip_len = version == 4 ? (packet[0] & 0x0F) * 4 : IPV6_HEADER;
    Py_ssize_t header_len = 0, payload_len = 0, count = 0, full_size = 0, last_size = 0;
    Py_ssize_t datagram = 0, total = 0;
    Py_ssize_t transport_min = udp ? UDP_HEADER : TCP_MIN_HEADER;
    if (key.len != KEY_SIZE) {
        problem = "the key is 32 bytes";
    } else if ((version != 4 && version != 6) || ip_len < IPV4_MIN_HEADER || start < ip_len ||
               gso_size < 1 || mtu < 1 || mtu > 65535 || receiver > 0xFFFFFFFFul ||
               length <= start + transport_min) {
        problem = "not a TCP or UDP super-packet";
    } else {
        header_len = start + (udp ? UDP_HEADER : (packet[start + 12] >> 4) * 4);
        payload_len = length - header_len;
        count = payload_len > 0 ? (payload_len + gso_size - 1) / gso_size : 0;
        full_size = header_len + gso_size;
        last_size = header_len + (payload_len - (count - 1) * gso_size);
        if (header_len < start + transport_min || payload_len <= 0 || count > MAX_SEGMENTS ||
            full_size > mtu || full_size > 65535) {
            problem = "not a TCP or UDP super-packet";
        }
    }
    if (problem == NULL) {
        Py_ssize_t padded = full_size + (-full_size & (PADDING_MULTIPLE - 1));
        Py_ssize_t last_padded = last_size + (-last_size & (PADDING_MULTIPLE - 1));
        padded = padded <= mtu ? padded : mtu;
        last_padded = last_padded <= mtu ? last_padded : mtu;
        datagram = TRANSPORT_HEADER_SIZE + padded + TAG_SIZE;
        total = (count - 1) * datagram + TRANSPORT_HEADER_SIZE + last_padded + TAG_SIZE;
        if (total > output.len) {
            problem = "the output buffer is too small";
        }
    }
    if (problem != NULL) {
        PyErr_SetString(PyExc_ValueError, problem);
        goto done;
    }
    int failed = 0;
    Py_BEGIN_ALLOW_THREADS
    EVP_CIPHER_CTX *ctx = keyed_context(key.buf, 1);
    failed = ctx == NULL;
    /* The pseudo-header's addresses and protocol; its length goes per segment. */
    uint64_t pseudo = version == 4 ? sum_words(packet + 12, 8) : sum_words(packet + 8, 32);
    pseudo += udp ? 17 : 6;
    unsigned first_id = version == 4 ? (unsigned)(packet[4] << 8 | packet[5]) : 0;
    uint32_t first_seq = udp ? 0 : get_be32(packet + start + 4);
    unsigned char flags = udp ? 0 : packet[start + 13];
    const unsigned char *payload = packet + header_len;
    for (Py_ssize_t row = 0; !failed && row < count; row++) {
        int last = row == count - 1;
        Py_ssize_t size = last ? last_size : full_size;
        Py_ssize_t padded = size + (-size & (PADDING_MULTIPLE - 1));
        padded = padded <= mtu ? padded : mtu;
        unsigned char *message = (unsigned char *)output.buf + row * datagram;
        unsigned char *text = message + TRANSPORT_HEADER_SIZE;
        put_le(message, MESSAGE_TRANSPORT, 4);
        put_le(message + 4, receiver, 4);
        put_le(message + 8, first + (unsigned long long)row, 8);
        memcpy(text, packet, (size_t)header_len);
        memcpy(text + header_len, payload + row * gso_size, (size_t)(size - header_len));
        memset(text + size, 0, (size_t)(padded - size));
        if (version == 4) {
            put_be16(text + 2, (unsigned)size);
            put_be16(text + 4, (first_id + (unsigned)row) & ONES);
            put_be16(text + 10, 0);
            put_be16(text + 10, checksum_of(sum_words(text, (size_t)ip_len)));
        } else {
            put_be16(text + 4, (unsigned)(size - IPV6_HEADER));
        }
        unsigned char *transport = text + start;
        Py_ssize_t checksum_at = udp ? 6 : 16;
        if (udp) {
            put_be16(transport + 4, (unsigned)(size - start));
        } else {
            put_be32(transport + 4, first_seq + (uint32_t)(row * gso_size));
            unsigned char segment_flags = flags & (unsigned char)~(TCP_FIN | TCP_PSH | TCP_CWR);
            if (row == 0) {
                segment_flags |= flags & TCP_CWR;
            }
            if (last) {
                segment_flags |= flags & (TCP_FIN | TCP_PSH);
            }
            transport[13] = segment_flags;
        }
        put_be16(transport + checksum_at, 0);
        uint64_t sum =
            sum_words(transport, (size_t)(size - start)) + pseudo + (uint64_t)(size - start);
        put_be16(transport + checksum_at, checksum_of(sum));
        failed = !seal_in_place(ctx, first + (unsigned long long)row, text, (int)padded);
    }
    EVP_CIPHER_CTX_free(ctx);
    Py_END_ALLOW_THREADS
    if (failed) {
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL failed to seal");
        goto done;
    }
    result = Py_BuildValue("nnn", count, datagram, total);
done:
    PyBuffer_Release(&key);
    PyBuffer_Release(&input);
    PyBuffer_Release(&output);
    return result;
}

static unsigned get_be16(const unsigned char *p) { return (unsigned)(p[0] << 8 | p[1]); }

/* Whether two segments' headers are equal but for what differs from segment to segment:
 * the IPv4 total length, ID and header checksum (IPv6: payload length), the TCP sequence
 * number, PSH and checksum. */
static int same_headers(const unsigned char *a, const unsigned char *b, Py_ssize_t ip_len,
                        Py_ssize_t header_len) {
    const unsigned char *ta = a + ip_len, *tb = b + ip_len;
    if (ip_len == IPV6_HEADER) {
        if (memcmp(a, b, 4) != 0 || memcmp(a + 6, b + 6, IPV6_HEADER - 6) != 0) {
            return 0;
        }
    } else if (memcmp(a, b, 2) != 0 || memcmp(a + 6, b + 6, 4) != 0 ||
               memcmp(a + 12, b + 12, (size_t)(ip_len - 12)) != 0) {
        return 0;
    }
    return memcmp(ta, tb, 4) == 0 && memcmp(ta + 8, tb + 8, 5) == 0 &&
           (ta[13] & ~TCP_PSH) == (tb[13] & ~TCP_PSH) && memcmp(ta + 14, tb + 14, 2) == 0 &&
           memcmp(ta + 18, tb + 18, (size_t)(header_len - ip_len - 18)) == 0;
}

/* What a packet is to the merge: TCP or not (then its IP header length), and for a
 * segment that may be merged (IPv4 without options or IPv6, as long as its header says,
 * not a fragment, ACK and maybe PSH only, some payload) its headers' length. */
typedef struct {
    Py_ssize_t ip_len;     /* 0: not a TCP packet whose connection can be read */
    Py_ssize_t header_len; /* 0: not a segment that may be merged */
    int psh;
} Segment;

static Segment read_segment(const unsigned char *packet, Py_ssize_t size) {
    Segment found = {0, 0, 0};
    if (size < IPV4_MIN_HEADER + TCP_MIN_HEADER) {
        return found;
    }
    int version = packet[0] >> 4, plain;
    if (version == 4) {
        found.ip_len = (packet[0] & 0x0F) * 4;
        if (packet[9] != 6 || found.ip_len < IPV4_MIN_HEADER ||
            size < found.ip_len + TCP_MIN_HEADER) {
            found.ip_len = 0;
            return found;
        }
        plain = found.ip_len == IPV4_MIN_HEADER && get_be16(packet + 2) == size &&
                (get_be16(packet + 6) & ~0x4000u) == 0;
    } else if (version == 6 && size >= IPV6_HEADER + TCP_MIN_HEADER && packet[6] == 6) {
        found.ip_len = IPV6_HEADER;
        plain = get_be16(packet + 4) + IPV6_HEADER == size;
    } else {
        return found;
    }
    const unsigned char *tcp = packet + found.ip_len;
    Py_ssize_t header_len = found.ip_len + (tcp[12] >> 4) * 4;
    if (plain && header_len - found.ip_len >= TCP_MIN_HEADER && header_len < size &&
        (tcp[13] & ~TCP_PSH) == 0x10) {
        found.header_len = header_len;
        found.psh = (tcp[13] & TCP_PSH) != 0;
    }
    return found;
}

/* Whether two TCP packets (`ip_len` bytes of IP header each) are of one connection. */
static int same_connection(const unsigned char *a, Py_ssize_t a_ip_len, const unsigned char *b,
                           Py_ssize_t b_ip_len) {
    if (a[0] >> 4 != b[0] >> 4) {
        return 0;
    }
    if (a[0] >> 4 == 6) {
        return memcmp(a + 8, b + 8, 32) == 0 &&
               memcmp(a + IPV6_HEADER, b + IPV6_HEADER, 4) == 0;
    }
    return memcmp(a + 12, b + 12, 8) == 0 && memcmp(a + a_ip_len, b + b_ip_len, 4) == 0;
}

/* One TUN write being built: a run of one connection's next segments, or one packet. */
typedef struct {
    Py_ssize_t first, last;   /* rows of its first and latest packet */
    Py_ssize_t ip_len;        /* 0: not TCP */
    Py_ssize_t header_len;    /* 0: one packet, written as it is */
    Py_ssize_t gso_size, size, segments;
    uint32_t next_seq;
    int closed;
} Write;

/* Append the segment at `row` to `write` if it is its next one. */
static int extend(Write *write, const unsigned char *const *rows, const Py_ssize_t *lengths,
                  Py_ssize_t *next_row, Py_ssize_t row, const Segment *segment) {
    const unsigned char *packet = rows[row];
    Py_ssize_t payload = lengths[row] - segment->header_len;
    if (write->closed || write->header_len != segment->header_len ||
        write->ip_len != segment->ip_len || payload > write->gso_size ||
        write->size + payload > 65535 ||
        get_be32(packet + segment->ip_len + 4) != write->next_seq ||
        !same_headers(rows[write->first], packet, segment->ip_len, segment->header_len)) {
        return 0;
    }
    next_row[write->last] = row;
    write->last = row;
    write->size += payload;
    write->segments += 1;
    write->next_seq += (uint32_t)payload;
    write->closed = segment->psh || payload < write->gso_size;
    return 1;
}

/* The write (virtio header, then the packet or the TCP super-packet) for `write`. */
static PyObject *build_write(const Write *write, const unsigned char *const *rows,
                             const Py_ssize_t *lengths, const Py_ssize_t *next_row) {
    PyObject *bytes = PyBytes_FromStringAndSize(NULL, VIRTIO_NET_HDR_SIZE + write->size);
    if (bytes == NULL) {
        return NULL;
    }
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(bytes);
    unsigned char *packet = out + VIRTIO_NET_HDR_SIZE;
    memset(out, 0, VIRTIO_NET_HDR_SIZE);
    Py_ssize_t first_size = lengths[write->first];
    memcpy(packet, rows[write->first], (size_t)first_size);
    if (write->segments == 1) {
        return bytes;
    }
    Py_ssize_t ip_len = write->ip_len, header_len = write->header_len, merged = write->size;
    unsigned char *at = packet + first_size;
    for (Py_ssize_t row = next_row[write->first];; row = next_row[row]) {
        Py_ssize_t part = lengths[row] - header_len;
        memcpy(at, rows[row] + header_len, (size_t)part);
        at += part;
        if (row == write->last) {
            break;
        }
    }
    packet[ip_len + 13] |= rows[write->last][ip_len + 13] & TCP_PSH;
    uint64_t pseudo;
    if (ip_len == IPV4_MIN_HEADER) {
        put_be16(packet + 2, (unsigned)merged);
        put_be16(packet + 10, 0);
        put_be16(packet + 10, (ONES - (unsigned)sum_words(packet, (size_t)ip_len)) % ONES);
        pseudo = sum_words(packet + 12, 8);
    } else {
        put_be16(packet + 4, (unsigned)(merged - IPV6_HEADER));
        pseudo = sum_words(packet + 8, 32);
    }
    unsigned partial = (unsigned)((pseudo + 6 + (uint64_t)(merged - ip_len)) % ONES);
    put_be16(packet + ip_len + 16, partial ? partial : ONES);
    /* struct virtio_net_hdr, in the machine's order: flags, gso_type, hdr_len, gso_size,
     * csum_start, csum_offset. */
    uint16_t fields[4] = {(uint16_t)header_len, (uint16_t)write->gso_size, (uint16_t)ip_len, 16};
    out[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
    out[1] = ip_len == IPV4_MIN_HEADER ? GSO_TCPV4 : GSO_TCPV6;
    memcpy(out + 2, fields, sizeof fields);
    return bytes;
}

/* The writes that carry the `count` packets at `rows` (`lengths` bytes each), as
 * coalesce's docstring says; with `whole`, the one write of them all (a new reference to
 * Py_None when they are not one run of two or more segments). NULL on an error. */
static PyObject *merge(const unsigned char *const *rows, const Py_ssize_t *lengths,
                       Py_ssize_t count, int whole) {
    size_t slots = (size_t)(count ? count : 1);
    Write *writes = PyMem_Calloc(slots, sizeof(Write));
    Py_ssize_t *next_row = PyMem_Calloc(slots, sizeof(Py_ssize_t));
    PyObject *result = NULL;
    Py_ssize_t written = 0;
    if (writes == NULL || next_row == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Write *last = NULL;
    for (Py_ssize_t row = 0; row < count; row++) {
        Segment segment = read_segment(rows[row], lengths[row]);
        if (segment.header_len && last != NULL &&
            extend(last, rows, lengths, next_row, row, &segment)) {
            continue;
        }
        Write *same = NULL;
        for (Py_ssize_t w = written - 1; segment.ip_len && w >= 0; w--) {
            if (writes[w].ip_len &&
                same_connection(rows[writes[w].first], writes[w].ip_len, rows[row],
                                segment.ip_len)) {
                same = &writes[w];
                break;
            }
        }
        /* Only the connection's latest write may take the segment: a connection's
         * packets keep their order. */
        if (same != NULL && segment.header_len && same != last &&
            extend(same, rows, lengths, next_row, row, &segment)) {
            last = same;
            continue;
        }
        if (whole && row > 0) {
            result = Py_NewRef(Py_None);
            goto done;
        }
        last = &writes[written++];
        Py_ssize_t payload = lengths[row] - segment.header_len;
        *last = (Write){row, row, segment.ip_len, segment.header_len, payload, lengths[row], 1,
                        0, 1};
        if (segment.header_len) {
            last->next_seq = get_be32(rows[row] + segment.ip_len + 4) + (uint32_t)payload;
            last->closed = segment.psh;
        }
    }
    if (whole) {
        result = written == 1 && writes[0].segments > 1
                     ? build_write(&writes[0], rows, lengths, next_row)
                     : Py_NewRef(Py_None);
        goto done;
    }
    result = PyList_New(written);
    for (Py_ssize_t w = 0; result != NULL && w < written; w++) {
        PyObject *write = build_write(&writes[w], rows, lengths, next_row);
        if (write == NULL) {
            Py_CLEAR(result);
            break;
        }
        PyList_SET_ITEM(result, w, write);
    }
done:
    PyMem_Free(writes);
    PyMem_Free(next_row);
    return result;
}

PyDoc_STRVAR(coalesce_doc,
"coalesce(packets) -> list[bytes]\n\n"
"The TUN writes (each a virtio header, then a packet) that carry `packets` to a TUN\n"
"with TSO granted: each run of one TCP connection's next segments (IPv4 without\n"
"options or IPv6, ACK and maybe PSH only, equal headers but for what differs segment\n"
"to segment, all of one size but the last, a PSH ending the run, within one IP\n"
"packet's size) becomes one super-packet with a GSO header; every other packet is\n"
"written as it is behind a zero header. Writes are in the order of their first packet,\n"
"and a connection's packets stay in order: a packet that does not join its\n"
"connection's run ends it.");

static PyObject *coalesce(PyObject *self, PyObject *arg) {
    (void)self;
    PyObject *list = PySequence_Fast(arg, "packets must be a sequence");
    if (list == NULL) {
        return NULL;
    }
    Py_ssize_t count = PySequence_Fast_GET_SIZE(list), held = 0;
    size_t slots = (size_t)(count ? count : 1);
    Py_buffer *views = PyMem_Calloc(slots, sizeof(Py_buffer));
    const unsigned char **rows = PyMem_Calloc(slots, sizeof(*rows));
    Py_ssize_t *lengths = PyMem_Calloc(slots, sizeof(*lengths));
    PyObject *result = NULL;
    if (views == NULL || rows == NULL || lengths == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (; held < count; held++) {
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(list, held), &views[held],
                               PyBUF_SIMPLE) < 0) {
            goto done;
        }
        rows[held] = views[held].buf;
        lengths[held] = views[held].len;
        if (lengths[held] > 65535) {
            PyErr_SetString(PyExc_ValueError, "a packet is longer than an IP packet can be");
            goto done;
        }
    }
    result = merge(rows, lengths, count, 0);
done:
    release_views(views, held);
    PyMem_Free(rows);
    PyMem_Free(lengths);
    Py_DECREF(list);
    return result;
}

PyDoc_STRVAR(coalesce_rows_doc,
"coalesce_rows(buffer, stride, count, last_size) -> bytes | None\n\n"
"The one write that coalesce makes of the `count` packets laid out one per `stride`\n"
"bytes in `buffer` (the last row `last_size` bytes), each as long as its IP header says\n"
"(IPv4's total length, IPv6's payload length plus its header) and no longer than its\n"
"row, when they are one run of a connection's next segments: a decrypted batch merged\n"
"without a view per packet. None when a row does not hold the packet its header\n"
"describes, or when coalesce would not make one super-packet of them all.");

static PyObject *coalesce_rows(PyObject *self, PyObject *args) {
    Py_buffer buffer;
    Py_ssize_t stride, count, last_size;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*nnn", &buffer, &stride, &count, &last_size)) {
        return NULL;
    }
    PyObject *result = NULL;
    const unsigned char **rows = NULL;
    Py_ssize_t *lengths = NULL;
    if (count < 1 || stride < 1 || last_size < 0 || last_size > stride ||
        (count - 1) * stride + last_size > buffer.len) {
        PyErr_SetString(PyExc_ValueError, "the buffer does not hold `count` rows");
        goto done;
    }
    rows = PyMem_Calloc((size_t)count, sizeof(*rows));
    lengths = PyMem_Calloc((size_t)count, sizeof(*lengths));
    if (rows == NULL || lengths == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t row = 0; row < count; row++) {
        const unsigned char *packet = (const unsigned char *)buffer.buf + row * stride;
        Py_ssize_t room = row < count - 1 ? stride : last_size, length = 0;
        if (room >= IPV6_HEADER && packet[0] >> 4 == 6) {
            length = IPV6_HEADER + get_be16(packet + 4);
        } else if (room >= IPV4_MIN_HEADER && packet[0] >> 4 == 4) {
            length = get_be16(packet + 2);
        }
        if (length < IPV4_MIN_HEADER || length > room) {
            result = Py_NewRef(Py_None);
            goto done;
        }
        rows[row] = packet;
        lengths[row] = length;
    }
    result = merge(rows, lengths, count, 1);
done:
    PyMem_Free(rows);
    PyMem_Free(lengths);
    PyBuffer_Release(&buffer);
    return result;
}

static PyMethodDef methods[] = {
    {"open_rows", open_rows, METH_VARARGS, open_rows_doc},
    {"seal_rows", seal_rows, METH_VARARGS, seal_rows_doc},
    {"seal_tso", seal_tso, METH_VARARGS, seal_tso_doc},
    {"coalesce", coalesce, METH_O, coalesce_doc},
    {"coalesce_rows", coalesce_rows, METH_VARARGS, coalesce_rows_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef batch_loops_module = {
    PyModuleDef_HEAD_INIT, "_batch_loops",
    "The data plane's batch loops: sealing and opening WireGuard messages without the GIL, "
    "cutting and sealing TCP super-packets, merging decrypted segments.",
    -1, methods,
};

PyMODINIT_FUNC PyInit__batch_loops(void) { return PyModule_Create(&batch_loops_module); }
