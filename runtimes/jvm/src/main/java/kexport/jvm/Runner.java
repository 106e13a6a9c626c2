package kexport.jvm;

import com.google.gson.Gson;
import com.google.gson.JsonElement;
import com.google.gson.JsonObject;
import com.google.gson.JsonParser;
import java.io.BufferedReader;
import java.io.File;
import java.io.FileDescriptor;
import java.io.FileOutputStream;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.jar.Attributes;
import java.util.jar.JarFile;

/**
 * kexport JVM runner: loads DL4J (Keras 2 HDF5) and ONNX models and predicts, for the parity check.
 *
 * <pre>java -cp kexport-jvm-runner.jar:DEPENDENCIES kexport.jvm.Runner</pre>
 *
 * One JSON object per line on stdin, one JSON reply per line on stdout:
 * <pre>
 *   {"cmd": "load", "kind": "dl4j"|"onnx", "path": P, "threads": N}
 *        -> {"ok", "id", "seconds", "inputs": [{name, dtype, shape}], "outputs": [...]}
 *   {"cmd": "predict", "id": I, "inputs": {name: "x.npy"}, "outdir": D}
 *        -> {"ok", "seconds", "outputs": {name: "D/out_K.npy"}}   (K = output position)
 *   {"cmd": "dispose", "id": I} -> {"ok"}
 * </pre>
 * Tensors are .npy files: numbers in their NumPy dtype, strings (an ONNX string input or output)
 * as NumPy unicode ("&lt;Un", UTF-32), which Python writes and reads without a pickle.
 * Errors come back as {"ok": false, "error", "type"} and the runner keeps serving. The first line
 * written is {"ok", "runner", "java", versions} once the JVM is up. Everything else the JVM or a
 * library prints goes to stderr: System.out is pointed at stderr before any library loads.
 */
public final class Runner {
    private static final Gson GSON = new Gson();
    private final Map<Integer, Model> models = new HashMap<>();
    private int nextId = 1;

    public static void main(String[] args) throws Exception {
        long t0 = System.nanoTime();
        PrintStream proto = new PrintStream(new FileOutputStream(FileDescriptor.out), true, StandardCharsets.UTF_8);
        System.setOut(System.err);
        Map<String, Object> hello = new LinkedHashMap<>();
        hello.put("ok", true);
        hello.put("runner", "kexport-jvm");
        hello.put("java", System.getProperty("java.version"));
        hello.putAll(versions());
        hello.put("seconds", (System.nanoTime() - t0) / 1e9);
        proto.println(GSON.toJson(hello));
        new Runner().serve(new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8)), proto);
    }

    /** The library versions from the runner jar's manifest (pom.xml writes them there). */
    private static Map<String, Object> versions() {
        Map<String, Object> out = new LinkedHashMap<>();
        try (JarFile jar = new JarFile(new File(Runner.class.getProtectionDomain().getCodeSource().getLocation().toURI()))) {
            Attributes a = jar.getManifest().getMainAttributes();
            out.put("dl4j_version", a.getValue("Kexport-Dl4j-Version"));
            out.put("onnxruntime_version", a.getValue("Kexport-Onnxruntime-Version"));
        } catch (Exception e) {
            // versions are informative only (e.g. running from target/classes)
        }
        return out;
    }

    void serve(BufferedReader in, PrintStream out) throws Exception {
        String line;
        while ((line = in.readLine()) != null) {
            if (line.isBlank()) continue;
            Map<String, Object> reply;
            long t0 = System.nanoTime();
            try {
                JsonObject req = new JsonParser().parse(line).getAsJsonObject();
                reply = handle(req);
                reply.put("ok", true);
            } catch (Throwable e) {
                reply = new LinkedHashMap<>();
                reply.put("ok", false);
                reply.put("type", e.getClass().getSimpleName());
                reply.put("error", message(e));
            }
            reply.put("seconds", (System.nanoTime() - t0) / 1e9);
            out.println(GSON.toJson(reply));
        }
        for (Model m : models.values()) m.close();
    }

    /** The exception's message, with the root cause when it says more (DL4J wraps a lot). */
    static String message(Throwable e) {
        Throwable root = e;
        while (root.getCause() != null && root.getCause() != root) root = root.getCause();
        String text = e.getClass().getSimpleName() + ": " + e.getMessage();
        if (root != e) text += " (caused by " + root.getClass().getSimpleName() + ": " + root.getMessage() + ")";
        return text;
    }

    private Map<String, Object> handle(JsonObject req) throws Exception {
        String cmd = req.get("cmd").getAsString();
        Map<String, Object> reply = new LinkedHashMap<>();
        switch (cmd) {
            case "load": {
                String kind = req.get("kind").getAsString();
                String path = req.get("path").getAsString();
                int threads = req.has("threads") ? req.get("threads").getAsInt() : 0;
                Model m;
                if (kind.equals("dl4j")) {
                    m = new Dl4jModel(path);
                } else if (kind.equals("onnx")) {
                    m = new OrtModel(path, threads);
                } else {
                    throw new IllegalArgumentException("unknown model kind '" + kind + "' (dl4j or onnx)");
                }
                int id = nextId++;
                models.put(id, m);
                reply.put("id", id);
                reply.put("inputs", m.inputs());
                reply.put("outputs", m.outputs());
                return reply;
            }
            case "predict": {
                Model m = model(req);
                Map<String, Npy.Array> xs = new HashMap<>();
                for (Map.Entry<String, JsonElement> e : req.getAsJsonObject("inputs").entrySet()) {
                    xs.put(e.getKey(), Npy.read(Paths.get(e.getValue().getAsString())));
                }
                Path dir = Paths.get(req.get("outdir").getAsString());
                Map<String, String> files = new LinkedHashMap<>();
                int k = 0;
                for (Map.Entry<String, Npy.Array> e : m.predict(xs).entrySet()) {
                    // Files are named by position, never by the (untrusted) tensor name.
                    Path file = dir.resolve("out_" + (k++) + ".npy");
                    Npy.write(file, e.getValue().descr, e.getValue().shape, e.getValue().data);
                    files.put(e.getKey(), file.toString());
                }
                reply.put("outputs", files);
                return reply;
            }
            case "dispose": {
                Model m = models.remove(req.get("id").getAsInt());
                if (m != null) m.close();
                return reply;
            }
            default:
                throw new IllegalArgumentException("unknown cmd '" + cmd + "'");
        }
    }

    private Model model(JsonObject req) {
        Model m = models.get(req.get("id").getAsInt());
        if (m == null) throw new IllegalArgumentException("no model with id " + req.get("id"));
        return m;
    }
}
