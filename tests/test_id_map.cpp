// IdMap: the Session's table of open calls (request id -> call), checked against std::map.
#include <gtest/gtest.h>

#include <cstdint>
#include <map>
#include <memory>
#include <random>

#include "flatpipe/util/id_map.hpp"

namespace flatpipe {
namespace {

using Value = std::shared_ptr<int>;

// Every entry of `ref` is found with its value, nothing else is, and the sizes agree.
void expect_same(IdMap<Value>& map, const std::map<std::uint32_t, int>& ref, std::uint32_t probe_limit) {
  ASSERT_EQ(map.size(), ref.size());
  for (const auto& [id, v] : ref) {
    Value* found = map.find(id);
    ASSERT_NE(found, nullptr) << "id " << id;
    EXPECT_EQ(**found, v) << "id " << id;
  }
  for (std::uint32_t id = 0; id < probe_limit; ++id) {
    EXPECT_EQ(map.contains(id), ref.count(id) == 1) << "id " << id;
  }
  std::size_t visited = 0;
  map.for_each([&](std::uint32_t id, Value& v) {
    ++visited;
    auto it = ref.find(id);
    ASSERT_NE(it, ref.end()) << "for_each visited id " << id << " that is not in the map";
    EXPECT_EQ(*v, it->second);
  });
  EXPECT_EQ(visited, ref.size());
}

TEST(IdMap, EmptyMapFindsNothingAndErasesNothing) {
  IdMap<Value> map;
  EXPECT_TRUE(map.empty());
  EXPECT_EQ(map.find(0), nullptr);
  EXPECT_EQ(map.find(0x80000000u), nullptr);
  EXPECT_FALSE(map.erase(7));
  map.clear();
  EXPECT_EQ(map.size(), 0u);
}

TEST(IdMap, EmplaceRefusesATakenIdAndKeepsTheFirstValue) {
  IdMap<Value> map;
  EXPECT_TRUE(map.emplace(5, std::make_shared<int>(50)));
  EXPECT_FALSE(map.emplace(5, std::make_shared<int>(99)));
  ASSERT_NE(map.find(5), nullptr);
  EXPECT_EQ(**map.find(5), 50);
  EXPECT_EQ(map.size(), 1u);
  EXPECT_TRUE(map.erase(5));
  EXPECT_FALSE(map.erase(5));
  EXPECT_TRUE(map.empty());
}

// The Session removes a finished call only while its id still maps to that call (the id may
// already serve a newer one).
TEST(IdMap, EraseWithAnExpectedValueRemovesOnlyThatValue) {
  IdMap<Value> map;
  const Value held = std::make_shared<int>(1);
  ASSERT_TRUE(map.emplace(9, held));
  EXPECT_FALSE(map.erase(9, std::make_shared<int>(1))) << "an equal int in another object is not the held value";
  EXPECT_FALSE(map.erase(8, held));
  ASSERT_NE(map.find(9), nullptr);
  EXPECT_TRUE(map.erase(9, held));
  EXPECT_EQ(map.find(9), nullptr);
  EXPECT_TRUE(map.empty());
}

// Random inserts and erases over a small id range (long probe runs, wrap-around at the end of
// the table, backward shifts) and over both halves of the id space (connector and acceptor ids).
TEST(IdMap, AgreesWithStdMapUnderRandomInsertsAndErases) {
  std::mt19937 rng(12345);
  for (const std::uint32_t base : {0u, 0x80000000u}) {
    IdMap<Value> map;
    std::map<std::uint32_t, int> ref;
    std::uniform_int_distribution<std::uint32_t> pick(0, 199);
    for (int step = 0; step < 20000; ++step) {
      const std::uint32_t id = base + pick(rng);
      if (rng() % 3 != 0) {
        const int v = step;
        const bool fresh = ref.emplace(id, v).second;
        ASSERT_EQ(map.emplace(id, std::make_shared<int>(v)), fresh) << "step " << step;
      } else {
        ASSERT_EQ(map.erase(id), ref.erase(id) == 1) << "step " << step;
      }
      if (step % 997 == 0) expect_same(map, ref, 0);
    }
    for (const auto& [id, v] : ref) {
      ASSERT_NE(map.find(id), nullptr);
      EXPECT_EQ(**map.find(id), v);
    }
    EXPECT_EQ(map.size(), ref.size());
  }
}

// A burst of open calls grows the table; when they finish, it shrinks and stays correct.
TEST(IdMap, GrowsForABurstAndShrinksAfterIt) {
  IdMap<Value> map;
  std::map<std::uint32_t, int> ref;
  for (std::uint32_t id = 0; id < 50000; ++id) {
    ASSERT_TRUE(map.emplace(id, std::make_shared<int>(static_cast<int>(id))));
    ref.emplace(id, static_cast<int>(id));
  }
  expect_same(map, ref, 0);
  for (std::uint32_t id = 0; id < 50000; ++id) {
    if (id % 1000 == 0) continue;  // 50 stay open
    ASSERT_TRUE(map.erase(id));
    ref.erase(id);
  }
  expect_same(map, ref, 50000);
  // Still usable after shrinking.
  ASSERT_TRUE(map.emplace(123456, std::make_shared<int>(7)));
  ref.emplace(123456, 7);
  expect_same(map, ref, 0);
}

TEST(IdMap, MovedFromMapIsEmptyAndUsable) {
  IdMap<Value> a;
  for (std::uint32_t id = 1; id <= 10; ++id) a.emplace(id, std::make_shared<int>(static_cast<int>(id)));
  IdMap<Value> b = std::move(a);
  EXPECT_EQ(b.size(), 10u);
  EXPECT_EQ(a.size(), 0u);  // NOLINT(bugprone-use-after-move): the moved-from state is specified
  EXPECT_EQ(a.find(3), nullptr);
  a.clear();
  EXPECT_TRUE(a.emplace(3, std::make_shared<int>(33)));
  EXPECT_EQ(**a.find(3), 33);
  EXPECT_EQ(**b.find(3), 3);
}

}  // namespace
}  // namespace flatpipe
