/* The one loop replay cannot do with numpy: where each record of a classic pcap file
 * starts (every record's captured-length field says where the next one begins).
 *
 * p2pwall.capindex uses it when it was built (a C compiler at install time) and walks
 * in Python otherwise, with the same results (tests/unit/test_replay.py compares them).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

/* walk(capture, offset, until, big_endian, out) -> (count, next)
 *
 * Writes the offsets of the records that start at or after ``offset`` and before
 * ``until`` (and whose 16-byte record header lies inside ``capture``) into ``out``, an
 * int64 buffer, until it is full.  Returns how many were written and where the walk
 * stopped: the next record's offset, which may lie past the end of ``capture`` when
 * the last record's data is cut off. */
static PyObject *walk(PyObject *self, PyObject *args)
{
    Py_buffer cap, out;
    Py_ssize_t off, until;
    int big;

    if (!PyArg_ParseTuple(args, "y*nnpw*", &cap, &off, &until, &big, &out))
        return NULL;
    if (out.len % 8) {
        PyBuffer_Release(&cap);
        PyBuffer_Release(&out);
        PyErr_SetString(PyExc_ValueError, "out must be an int64 buffer");
        return NULL;
    }
    const unsigned char *p = cap.buf;
    int64_t *dst = out.buf;
    Py_ssize_t room = out.len / 8, n = 0;
    Py_ssize_t stop = cap.len - 16;

    if (until - 1 < stop)
        stop = until - 1;
    Py_BEGIN_ALLOW_THREADS
    while (off >= 0 && off <= stop && n < room) {
        const unsigned char *h = p + off + 8;
        uint32_t len = big ? ((uint32_t)h[0] << 24 | (uint32_t)h[1] << 16 | (uint32_t)h[2] << 8 | h[3])
                           : ((uint32_t)h[3] << 24 | (uint32_t)h[2] << 16 | (uint32_t)h[1] << 8 | h[0]);
        dst[n++] = off;
        off += 16 + (Py_ssize_t)len;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&cap);
    PyBuffer_Release(&out);
    return Py_BuildValue("nn", n, off);
}

static PyMethodDef methods[] = {
    {"walk", walk, METH_VARARGS, "walk(capture, offset, until, big_endian, out) -> (count, next)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "p2pwall._capwalk", "Record offsets of a classic pcap file.", -1, methods,
};

PyMODINIT_FUNC PyInit__capwalk(void)
{
    return PyModule_Create(&module);
}
