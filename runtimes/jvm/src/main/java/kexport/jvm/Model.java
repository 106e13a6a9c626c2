package kexport.jvm;

import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/** A loaded model: named inputs in, named outputs out (names as the model file spells them). */
interface Model extends AutoCloseable {
    /** [{name, dtype, shape}] in the model's input order; dtype is a NumPy dtype name. */
    List<Map<String, Object>> inputs() throws Exception;

    List<Map<String, Object>> outputs() throws Exception;

    /** Outputs by name, in the model's output order. */
    LinkedHashMap<String, Npy.Array> predict(Map<String, Npy.Array> inputs) throws Exception;

    @Override
    void close() throws Exception;
}
