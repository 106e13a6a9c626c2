package kexport.jvm;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * NumPy .npy files (format versions 1-3, C order, little-endian or single-byte dtypes): the
 * reference inputs come in this way and the outputs go back this way, so the parity check
 * compares bytes NumPy wrote and read itself.
 */
final class Npy {
    private static final byte[] MAGIC = {(byte) 0x93, 'N', 'U', 'M', 'P', 'Y'};
    private static final Pattern DESCR = Pattern.compile("'descr'\\s*:\\s*'([^']+)'");
    private static final Pattern FORTRAN = Pattern.compile("'fortran_order'\\s*:\\s*(True|False)");
    private static final Pattern SHAPE = Pattern.compile("'shape'\\s*:\\s*\\(([^)]*)\\)");

    /** dtype descr ("<f4", "|u1", "<U7", ...), C-order shape and little-endian data. */
    static final class Array {
        final String descr;
        final long[] shape;
        final ByteBuffer data;

        Array(String descr, long[] shape, ByteBuffer data) {
            this.descr = descr;
            this.shape = shape;
            this.data = data.order(ByteOrder.LITTLE_ENDIAN);
        }

        long size() {
            long n = 1;
            for (long d : shape) n *= d;
            return n;
        }

        boolean isUnicode() {
            return descr.startsWith("<U");
        }

        /** NumPy unicode strings ("<Un": n UTF-32LE code points each, NUL-padded), in C order. */
        String[] toStrings() {
            if (!isUnicode()) throw new IllegalArgumentException("npy dtype " + descr + " is not a NumPy unicode string");
            int width = Integer.parseInt(descr.substring(2));
            int n = Math.toIntExact(size());
            String[] out = new String[n];
            for (int i = 0; i < n; i++) {
                StringBuilder sb = new StringBuilder();
                for (int k = 0; k < width; k++) {
                    int cp = data.getInt((i * width + k) * 4);
                    if (cp == 0) break;
                    sb.appendCodePoint(cp);
                }
                out[i] = sb.toString();
            }
            return out;
        }

        /** The values as float32 (DL4J computes in float32). */
        float[] toFloats() {
            int n = Math.toIntExact(size());
            float[] out = new float[n];
            ByteBuffer b = data.duplicate().order(ByteOrder.LITTLE_ENDIAN);
            b.rewind();
            switch (descr) {
                case "<f4": b.asFloatBuffer().get(out); break;
                case "<f8": for (int i = 0; i < n; i++) out[i] = (float) b.getDouble(i * 8); break;
                case "<i4": for (int i = 0; i < n; i++) out[i] = b.getInt(i * 4); break;
                case "<i8": for (int i = 0; i < n; i++) out[i] = b.getLong(i * 8); break;
                case "|u1": case "|b1": for (int i = 0; i < n; i++) out[i] = b.get(i) & 0xff; break;
                case "|i1": for (int i = 0; i < n; i++) out[i] = b.get(i); break;
                default: throw new IllegalArgumentException("npy dtype " + descr + " cannot be read as float32");
            }
            return out;
        }
    }

    private Npy() {}

    /** Strings as a NumPy unicode array ("<Un", n = the longest string in code points, at least 1). */
    static Array ofStrings(String[] values, long[] shape) {
        int width = 1;
        for (String v : values) width = Math.max(width, v.codePointCount(0, v.length()));
        ByteBuffer b = ByteBuffer.allocate(values.length * width * 4).order(ByteOrder.LITTLE_ENDIAN);
        for (int i = 0; i < values.length; i++) {
            int[] cps = values[i].codePoints().toArray();
            for (int k = 0; k < width; k++) b.putInt((i * width + k) * 4, k < cps.length ? cps[k] : 0);
        }
        return new Array("<U" + width, shape, b);
    }

    static Array read(Path path) throws IOException {
        byte[] all = Files.readAllBytes(path);
        ByteBuffer b = ByteBuffer.wrap(all).order(ByteOrder.LITTLE_ENDIAN);
        for (int i = 0; i < MAGIC.length; i++) {
            if (all.length < 10 || all[i] != MAGIC[i]) throw new IOException(path + ": not a .npy file");
        }
        int major = all[6];
        int headerLen;
        int start;
        if (major == 1) {
            headerLen = b.getShort(8) & 0xffff;
            start = 10;
        } else if (major == 2 || major == 3) {
            headerLen = b.getInt(8);
            start = 12;
        } else {
            throw new IOException(path + ": unsupported .npy version " + major);
        }
        String header = new String(all, start, headerLen, StandardCharsets.ISO_8859_1);
        Matcher d = DESCR.matcher(header);
        Matcher f = FORTRAN.matcher(header);
        Matcher s = SHAPE.matcher(header);
        if (!d.find() || !f.find() || !s.find()) throw new IOException(path + ": bad .npy header " + header.trim());
        if (f.group(1).equals("True")) throw new IOException(path + ": Fortran-order .npy is not supported");
        String descr = d.group(1).replace('=', '<');
        if (descr.startsWith(">")) throw new IOException(path + ": big-endian .npy is not supported");
        String dims = s.group(1).trim();
        long[] shape;
        if (dims.isEmpty()) {
            shape = new long[0];
        } else {
            String[] parts = dims.split(",");
            int n = 0;
            for (String p : parts) if (!p.trim().isEmpty()) n++;
            shape = new long[n];
            int i = 0;
            for (String p : parts) if (!p.trim().isEmpty()) shape[i++] = Long.parseLong(p.trim());
        }
        int dataStart = start + headerLen;
        ByteBuffer data = ByteBuffer.allocateDirect(all.length - dataStart).order(ByteOrder.LITTLE_ENDIAN);
        data.put(all, dataStart, all.length - dataStart).rewind();
        return new Array(descr, shape, data);
    }

    static void write(Path path, String descr, long[] shape, ByteBuffer data) throws IOException {
        StringBuilder dims = new StringBuilder();
        for (long d : shape) dims.append(d).append(", ");
        String shapeText = shape.length == 1 ? "(" + shape[0] + ",)"
                : "(" + (shape.length == 0 ? "" : dims.substring(0, dims.length() - 2)) + ")";
        String dict = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + shapeText + ", }";
        int unpadded = 10 + dict.length() + 1;
        int pad = (64 - unpadded % 64) % 64;
        StringBuilder header = new StringBuilder(dict);
        for (int i = 0; i < pad; i++) header.append(' ');
        header.append('\n');
        byte[] h = header.toString().getBytes(StandardCharsets.ISO_8859_1);
        ByteBuffer src = data.duplicate();
        src.rewind();
        byte[] body = new byte[src.remaining()];
        src.get(body);
        ByteBuffer out = ByteBuffer.allocate(10 + h.length + body.length).order(ByteOrder.LITTLE_ENDIAN);
        out.put(MAGIC).put((byte) 1).put((byte) 0).putShort((short) h.length).put(h).put(body);
        Files.write(path, out.array());
    }
}
