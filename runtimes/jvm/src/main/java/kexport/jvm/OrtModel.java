package kexport.jvm;

import ai.onnxruntime.NodeInfo;
import ai.onnxruntime.OnnxJavaType;
import ai.onnxruntime.OnnxTensor;
import ai.onnxruntime.OnnxValue;
import ai.onnxruntime.OrtEnvironment;
import ai.onnxruntime.OrtSession;
import ai.onnxruntime.TensorInfo;
import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/** An ONNX model in ONNX Runtime for Java (CPU execution provider). */
final class OrtModel implements Model {
    private static final Map<OnnxJavaType, String> DTYPES = Map.of(
            OnnxJavaType.FLOAT, "float32", OnnxJavaType.DOUBLE, "float64", OnnxJavaType.INT8, "int8",
            OnnxJavaType.INT16, "int16", OnnxJavaType.INT32, "int32", OnnxJavaType.INT64, "int64",
            OnnxJavaType.BOOL, "bool", OnnxJavaType.UINT8, "uint8", OnnxJavaType.FLOAT16, "float16",
            OnnxJavaType.STRING, "str");
    private static final Map<OnnxJavaType, String> DESCR = Map.of(
            OnnxJavaType.FLOAT, "<f4", OnnxJavaType.DOUBLE, "<f8", OnnxJavaType.INT8, "|i1",
            OnnxJavaType.INT16, "<i2", OnnxJavaType.INT32, "<i4", OnnxJavaType.INT64, "<i8",
            OnnxJavaType.BOOL, "|b1", OnnxJavaType.UINT8, "|u1", OnnxJavaType.FLOAT16, "<f2");

    private final OrtEnvironment env;
    private final OrtSession session;

    OrtModel(String path, int threads) throws Exception {
        env = OrtEnvironment.getEnvironment();
        try (OrtSession.SessionOptions opts = new OrtSession.SessionOptions()) {
            if (threads > 0) opts.setIntraOpNumThreads(threads);
            session = env.createSession(path, opts);
        }
    }

    private static List<Map<String, Object>> describe(Map<String, NodeInfo> infos) {
        List<Map<String, Object>> out = new ArrayList<>();
        for (Map.Entry<String, NodeInfo> e : infos.entrySet()) {
            Map<String, Object> m = new LinkedHashMap<>();
            m.put("name", e.getKey());
            if (e.getValue().getInfo() instanceof TensorInfo) {
                TensorInfo t = (TensorInfo) e.getValue().getInfo();
                m.put("dtype", DTYPES.getOrDefault(t.type, t.type.toString().toLowerCase()));
                m.put("shape", t.getShape());
            }
            out.add(m);
        }
        return out;
    }

    @Override
    public List<Map<String, Object>> inputs() throws Exception {
        return describe(session.getInputInfo());
    }

    @Override
    public List<Map<String, Object>> outputs() throws Exception {
        return describe(session.getOutputInfo());
    }

    @Override
    public LinkedHashMap<String, Npy.Array> predict(Map<String, Npy.Array> inputs) throws Exception {
        Map<String, OnnxTensor> feed = new LinkedHashMap<>();
        try {
            for (Map.Entry<String, NodeInfo> e : session.getInputInfo().entrySet()) {
                Npy.Array a = inputs.get(e.getKey());
                if (a == null) throw new IllegalArgumentException("missing input '" + e.getKey() + "'");
                TensorInfo info = (TensorInfo) e.getValue().getInfo();
                if (info.type == OnnxJavaType.STRING) {
                    if (!a.isUnicode()) {
                        throw new IllegalArgumentException("input '" + e.getKey() + "' is " + a.descr + ", the model wants strings");
                    }
                    feed.put(e.getKey(), OnnxTensor.createTensor(env, a.toStrings(), a.shape));
                    continue;
                }
                String want = DESCR.get(info.type);
                if (!a.descr.equals(want)) {
                    throw new IllegalArgumentException("input '" + e.getKey() + "' is " + a.descr + ", the model wants " + want);
                }
                feed.put(e.getKey(), OnnxTensor.createTensor(env, a.data, a.shape, info.type));
            }
            LinkedHashMap<String, Npy.Array> out = new LinkedHashMap<>();
            try (OrtSession.Result result = session.run(feed)) {
                for (Map.Entry<String, OnnxValue> e : result) {
                    if (!(e.getValue() instanceof OnnxTensor)) {
                        throw new IllegalArgumentException("output '" + e.getKey() + "' is not a tensor");
                    }
                    OnnxTensor t = (OnnxTensor) e.getValue();
                    TensorInfo info = t.getInfo();
                    if (info.type == OnnxJavaType.STRING) {
                        List<String> values = new ArrayList<>();
                        flatten(t.getValue(), values);
                        out.put(e.getKey(), Npy.ofStrings(values.toArray(new String[0]), info.getShape()));
                        continue;
                    }
                    String descr = DESCR.get(info.type);
                    if (descr == null) throw new IllegalArgumentException("output '" + e.getKey() + "' has type " + info.type);
                    ByteBuffer data = t.getByteBuffer();
                    out.put(e.getKey(), new Npy.Array(descr, info.getShape(), data));
                }
            }
            return out;
        } finally {
            for (OnnxTensor t : feed.values()) t.close();
        }
    }

    /** A string tensor's value (String, String[], String[][], ...) in C order. */
    private static void flatten(Object value, List<String> out) {
        if (value instanceof String) {
            out.add((String) value);
        } else {
            for (Object item : (Object[]) value) flatten(item, out);
        }
    }

    @Override
    public void close() throws Exception {
        session.close();
    }
}
