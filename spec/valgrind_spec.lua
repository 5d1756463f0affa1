-- Real traffic and a clean shutdown under valgrind memcheck: no leaks, no
-- invalid reads or writes, and no uv handle left open (traffic.lua asserts
-- rn.run() returned true, which core.shutdown only does when uv_loop_close
-- succeeded with zero handles left).

local H = require("helper")

describe("under valgrind", function()
  it("serves HTTP and WebSocket traffic and shuts down without leaks or bad accesses", function()
    H.run(function()
      local cmd = table.concat({
        "cd", H.q(H.ROOT), "&&",
        "valgrind --quiet --leak-check=full --show-leak-kinds=definite,indirect",
        "--errors-for-leak-kinds=definite,indirect --error-exitcode=99",
        "--suppressions=spec/support/valgrind.supp",
        "lua5.4 spec/support/traffic.lua",
      }, " ")
      local rc, out, err = H.sh(cmd):wait(240)
      assert.equal("traffic ok\t100\n", out)
      assert.equal(0, rc, err)
      assert.equal("", err)
    end, { timeout = 300 })
  end)
end)
